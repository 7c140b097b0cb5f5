"""visage-export --format=pytorch|safetensors: the original's files back from our checkpoints.

The golden expert files go through visage-convert and back out and must come out equal (every key,
shape, dtype, value and, for the expert files, the order); without the kept tensors the unused
ones are written as documented; the 6B names and shapes are those of tests/golden/keys_*.txt."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import CONFIG, REPO, SPEC, convert_golden, golden, run_convert

from conversion import export as to_original
from conversion.torch_io import ConversionError
from visage_jax import checkpoint as ckpt

pytestmark = pytest.mark.slow  # whole commands and programs, end to end


def _load(path):
  return torch.load(path, map_location="cpu", weights_only=True)


def _export(checkpoint, out, **kw):
  weights = to_original.weights_of_checkpoint(checkpoint)
  return to_original.export(weights, str(out), log=lambda m: None, **kw)


def _assert_same(ours: dict, theirs: dict, *, skip=()):
  assert set(ours) == set(theirs), set(ours) ^ set(theirs)
  for k, want in theirs.items():
    if any(s in k for s in skip):
      continue
    got = ours[k]
    assert got.dtype == want.dtype and got.shape == want.shape, (k, got.dtype, want.dtype)
    assert torch.equal(got, want), k


@pytest.mark.parametrize("mlp_impl", ["plain", "fused"])
def test_golden_expert_files_round_trip(mlp_impl, ckpt_plain, ckpt_fused, tmp_path):
  """convert → export gives the golden expert files back exactly, in their order (under "fused"
  the fc1/fc2 adapters come from the kept tensors); converting the export gives our parameters
  back exactly."""
  source = {"plain": ckpt_plain, "fused": ckpt_fused}[mlp_impl]
  out = tmp_path / "out"
  sidecar = _export(source, out)
  assert sorted(os.listdir(out)) == ["expert1.pth", "expert2.pth", "export.json"]
  for name in ("expert1", "expert2"):
    ours, theirs = _load(out / f"{name}.pth"), _load(golden(f"{name}.pth"))
    _assert_same(ours, theirs)
    assert list(ours) == list(theirs)
    assert zipfile.ZipFile(out / f"{name}.pth").testzip() is None  # CRCs written
    for key, digest in sidecar["files"][f"{name}.pth"]["sha256"].items():
      import hashlib

      data = ours[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
      assert hashlib.sha256(data).hexdigest() == digest, key

  back = str(tmp_path / "back")
  res = run_convert(
    f"--config={CONFIG}:tiny",
    f"--config.model.backbone.mlp_impl={mlp_impl}",
    "--config.model.dtype=float32",
    f"--backbone={golden('backbone_t4.pt')}",
    f"--expert1={out / 'expert1.pth'}",
    f"--expert2={out / 'expert2.pth'}",
    f"--output={back}",
  )
  assert res.returncode == 0, res.stderr[-2000:]
  a = to_original.weights_of_checkpoint(source).flat
  b = to_original.weights_of_checkpoint(back).flat
  assert set(a) == set(b)
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))


def test_without_kept_tensors_unused_ones_are_zero_or_rebuilt(ckpt_fused, tmp_path):
  """A checkpoint without kept tensors (as a model trained here has): the fc1/fc2 adapters the
  fused MLP never applies and the CLIP projector's are zeros, BatchNorm counters 0, the centre-bias
  grids rebuilt equal to the original's; everything else exact."""
  bare = tmp_path / "bare"
  shutil.copytree(ckpt_fused, bare)
  os.remove(bare / ckpt.KEPT_FILE)
  out = tmp_path / "out"
  _export(bare, out)
  for name in ("expert1", "expert2"):
    ours, theirs = _load(out / f"{name}.pth"), _load(golden(f"{name}.pth"))
    unused = (".mlp.fc1.lora_", ".mlp.fc2.lora_", "clip_projector.", "num_batches_tracked")
    _assert_same(ours, theirs, skip=unused)
    for k, v in ours.items():
      if any(s in k for s in unused):
        assert v.dtype == theirs[k].dtype and v.shape == theirs[k].shape, k
        assert not v.any(), k
  # the grids are rebuilt, not kept: equal to the original's all the same
  grids = _load(out / "expert1.pth")
  for axis in ("xx", "yy"):
    assert torch.equal(
      grids[f"decoder.center_bias.{axis}"],
      _load(golden("expert1.pth"))[f"decoder.center_bias.{axis}"],
    )


def test_stage1_file_round_trip(stage1_expert1, tmp_path):
  """A stage-1 expert file (no LoRA) comes back as a stage-1 file: the same keys and values."""
  _, theirs, conv = stage1_expert1
  _export(conv, tmp_path / "out")
  ours = _load(tmp_path / "out" / "expert1.pth")
  _assert_same(ours, theirs)
  assert list(ours) == list(theirs)


def test_full_state_dict_and_safetensors(ckpt_plain, tmp_path):
  """--full_state_dict equals the original's model.state_dict() (the golden full files: backbone
  under peft's base_layer names, the CLIP position embedding stretched to 8 frames as the
  original's loader does, the encoder in the original's order); --format=safetensors holds the
  same tensors."""
  _export(ckpt_plain, tmp_path / "full", full=True)
  _export(ckpt_plain, tmp_path / "st", fmt="safetensors")
  from safetensors.torch import load_file

  for name in ("expert1", "expert2"):
    ours = _load(tmp_path / "full" / f"full_{name}.pth")
    theirs = _load(golden(f"full_{name}.pth"))
    _assert_same(ours, theirs)
    encoder = [k for k in theirs if k.startswith("encoder.")]
    assert [k for k in ours if k.startswith("encoder.")] == encoder
    _assert_same(
      load_file(str(tmp_path / "st" / f"{name}.safetensors")), _load(golden(f"{name}.pth"))
    )


def _spec_keys(name):
  out = {}
  for line in open(os.path.join(SPEC, name)):
    m = re.match(r"^(\S+) \(([\d, ]*)\) (\S+)$", line.strip())
    if m and not line.startswith("#"):
      out[m.group(1)] = (
        tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x),
        m.group(3),
      )
  return out


def test_6b_expert_files_have_the_original_names_and_shapes():
  """The export plan of the 6B model (shapes only, no weights) against the key lists of the real
  checkpoints: every name, shape and dtype."""
  from configs.visage import get_config

  cfg = get_config("6b").copy_and_resolve_references()
  weights = to_original.Weights(
    config=cfg,
    flat=ckpt.abstract_flat_state(cfg.model),
    kept=None,
    without_lora=(),
    key_order={},
    backbone_original=True,
    source={},
  )
  for name in ("expert1", "expert2"):
    specs = to_original.expert_specs(weights, name)
    ours = {s.name: (tuple(s.shape), str(np.dtype(s.dtype))) for s in specs}
    assert len(ours) == len(specs)
    assert ours == _spec_keys(f"keys_{name}_6b.txt")


def test_refused_configs_name_the_field(ckpt_plain, tmp_path):
  cfg = ckpt.read_config(ckpt_plain)
  with cfg.unlocked():
    cfg.model.backbone.taps = (1, 3, 5)
  with pytest.raises(ConversionError, match=r"model\.backbone\.taps"):
    to_original.check_expressible(cfg)
  cfg = ckpt.read_config(ckpt_plain)
  cfg.model.lora.targets = ("qkv", "ls1")
  with pytest.raises(ConversionError, match=r"model\.lora\.targets has \['ls1'\]"):
    to_original.check_expressible(cfg)

  merged = convert_golden(str(tmp_path / "merged"), "--merge_lora")
  out = tmp_path / "out"
  res = subprocess.run(
    [
      sys.executable,
      "-c",
      "from visage_jax.cli.export import run; run()",
      "--format=pytorch",
      f"--checkpoint={merged}",
      f"--output={out}",
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [
    "visage-export: error: model.lora_merged=True: the LoRA is folded into per-expert backbones "
    "and cannot be written as the original's adapters; export the unmerged checkpoint"
  ]
  assert not out.exists() and not list(tmp_path.glob("out.partial-*"))


@pytest.mark.parametrize(
  "module, entry, flags",
  [
    ("visage_jax.cli.export", "run", ["--format", "--checkpoint", "--workdir", "--output"]),
    ("visage_jax.cli.train", "run_cli", ["--config", "--workdir"]),
    ("visage_jax.cli.convert", "run", ["--backbone", "--expert1", "--[no]merge_lora"]),
    ("visage_jax.cli.predict", "run", ["--checkpoint", "--input", "--output", "--map_size"]),
    ("visage_jax.cli.evaluate", "run", ["--checkpoint", "--data", "--layout"]),
  ],
)
def test_help_lists_the_commands_own_flags(module, entry, flags):
  """absl lists only the flags of the file that sys.argv[0] names; run_app registers the command's
  own there, so `--help` of an installed script (here: a file that calls the entry point) lists
  them, after the command's module docstring (its synopsis)."""
  script = f"from {module} import {entry}; {entry}()"
  res = subprocess.run(
    [sys.executable, "-c", script, "--help"],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
    timeout=120,
  )
  assert res.returncode == 0, res.stderr[-2000:]  # where absl's --help exits with 1
  for flag in flags:
    assert f"  {flag}" in res.stdout, (flag, res.stdout)
  source = open(importlib.util.find_spec(module).origin).read()  # not imported: its flags
  synopsis = ast.get_docstring(ast.parse(source)).splitlines()[0]
  assert res.stdout.startswith(synopsis), res.stdout[:300]
