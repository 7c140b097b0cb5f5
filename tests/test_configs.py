"""Presets build abstractly, and the 6B model matches the real checkpoints' key lists."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from conftest import SPEC

from configs.visage import get_config
from conversion.convert import _torch_layout
from conversion.keymap import canonical_expert_key, slots_for
from visage_jax import checkpoint as ckpt

CLIP_HEADS = re.compile(r"(clip_projector|clip_decoder|final_clip_decoder|clip_pos_embed)")


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
  path = os.path.join(SPEC, name)
  if not os.path.exists(path):
    pytest.fail(f"{path} is missing from the repository")
  out = {}
  for line in open(path):
    if line.startswith("#") or not line.strip():
      continue
    m = re.match(r"^(\S+) \(([\d, ]*)\) (\S+)$", line.strip())
    assert m, line
    out[m.group(1)] = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
  return out


def numel(shape) -> int:
  return int(np.prod(shape)) if shape else 1


@pytest.fixture(scope="module", params=["plain", "fused"])
def abstract_6b(request):
  cfg = get_config("6b")
  cfg.model.backbone.mlp_impl = request.param
  return cfg, ckpt.abstract_flat_state(cfg.model)


def test_presets_build_abstractly():
  for preset in ("6b", "1b", "tiny"):
    flat = ckpt.abstract_flat_state(get_config(preset).model)
    total = sum(numel(v.shape) for v in flat.values())
    assert total > 0
  with pytest.raises(ValueError, match="unknown preset"):
    get_config("7b")


def test_6b_parameter_counts_match_the_key_lists(abstract_6b):
  cfg, flat = abstract_6b
  backbone = read_keys("keys_6b_backbone.txt")
  theirs_backbone = sum(
    numel(s)
    for k, s in backbone.items()
    if k.startswith("vision_encoder.") and not CLIP_HEADS.search(k)
  )
  ours_backbone = sum(
    numel(v.shape)
    for p, v in flat.items()
    if p[0] == "backbone" and p[-1] not in ("lora_a", "lora_b")
  )
  # The only difference: the position embedding holds 20 frames here and 4 in the file.
  assert ours_backbone - theirs_backbone == (20 - 4) * 256 * 3200

  for e, name in enumerate(("expert1", "expert2")):
    keys = read_keys(f"keys_{name}_6b.txt")
    lora = {k: s for k, s in keys.items() if ".lora_" in k and not CLIP_HEADS.search(k)}
    ours_lora = sum(
      numel(v.shape[1:]) if p[1] == "patch_embed" else numel(v.shape) // 2
      for p, v in flat.items()
      if p[-1] in ("lora_a", "lora_b")
    )
    fc = sum(numel(s) for k, s in lora.items() if re.search(r"mlp\.fc[12]\.", k))
    expected = sum(numel(s) for s in lora.values())
    if cfg.model.backbone.mlp_impl == "fused":
      expected -= fc  # the fused MLP bypasses fc1/fc2 LoRA, so the model has none
    assert ours_lora == expected, name
    decoder = {
      k: s
      for k, s in keys.items()
      if ".lora_" not in k
      and not k.endswith("num_batches_tracked")
      and not k.endswith(("center_bias.xx", "center_bias.yy"))
    }
    ours = sum(numel(v.shape) for p, v in flat.items() if p[0] == name)
    assert ours == sum(numel(s) for s in decoder.values()), name
    del e


def test_6b_every_slot_has_a_real_key_of_the_right_shape(abstract_6b):
  """Each of our 6B parameters maps to a named tensor of the real files, shape-checked."""
  cfg, flat = abstract_6b
  experts = ("expert1", "expert2")
  slots = slots_for(flat, experts, cfg.model.backbone.depth)
  backbone = {k[len("vision_encoder.") :]: s for k, s in read_keys("keys_6b_backbone.txt").items()}
  expert_keys = {
    n: {canonical_expert_key(k): s for k, s in read_keys(f"keys_{n}_6b.txt").items()}
    for n in experts
  }
  for slot in slots:
    table = backbone if slot.source == "backbone" else expert_keys[slot.source]
    assert slot.name in table, f"{slot.source}: no key {slot.name}"
    if slot.kind == "pos_embed":
      continue
    meta = torch.empty(table[slot.name], device="meta")
    got = tuple(_torch_layout(meta, slot.kind, str(slot.path[-1])).shape)
    want = tuple(flat[slot.path].shape[len(slot.index) :])
    assert got == want, (slot.name, got, want)
