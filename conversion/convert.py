"""The original PyTorch weights → one Orbax checkpoint plus its resolved config (`convert`, which
`visage-convert` runs).

Streams tensor by tensor from memory-mapped files into preallocated arrays of the target dtype;
checks every name, shape and LoRA rank against the model the config describes; reports what it
ignored; writes into a temporary directory renamed to DIR only when everything succeeded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

from conversion.keymap import (
  Slot,
  canonical_expert_key,
  classify_ignored,
  expert_display_name,
  slots_for,
)
from conversion.torch_io import (
  ConversionError,
  TensorSpec,
  exact_numpy,
  is_memory_mapped,
  load_state_dict,
  release_pages,
  to_numpy,
  write_safetensors,
)

EXPERT_NAMES = ("expert1", "expert2")


def _say(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _torch_layout(tensor, kind: str, leaf: str):
  """The PyTorch tensor in our layout (docs/model.md §11), still a torch tensor."""
  if kind == "lora_b" and tensor.ndim == 5:  # Conv3d 1×1×1 r→D: (D, r, 1, 1, 1) → (r, D)
    return tensor.reshape(tensor.shape[0], tensor.shape[1]).T
  if leaf in ("kernel", "lora_a", "lora_b"):
    if tensor.ndim == 2:  # Linear (out, in) → (in, out)
      return tensor.T
    # ConvNd (out, in/groups, k...) → (k..., in/groups, out)
    return tensor.permute(*range(2, tensor.ndim), 1, 0)
  return tensor


def interpolate_pos_embed(tensor, *, pretrained_frames: int, frames: int, grid: int, file: str):
  """Stretch (1, 1 + T0·g0², D) to (1, 1 + T·g², D) exactly as InternVideo2's loader does:
  linear along time with half-pixel centres, then bicubic per frame if the grid differs."""
  import torch
  import torch.nn.functional as F

  if tensor.ndim != 3 or tensor.shape[0] != 1:
    raise ConversionError(f"{file}: pos_embed has shape {tuple(tensor.shape)}, expected (1, N, D)")
  n, d = tensor.shape[1] - 1, tensor.shape[2]
  g0 = int(round((n / pretrained_frames) ** 0.5)) if n % pretrained_frames == 0 else -1
  if g0 <= 0 or g0 * g0 * pretrained_frames != n:
    raise ConversionError(
      f"{file}: pos_embed has {n} patch rows, not {pretrained_frames} frames of a square grid "
      f"(model.backbone.pretrained_num_frames={pretrained_frames})"
    )
  extra, tokens = tensor[:, :1], tensor[:, 1:]
  if pretrained_frames != frames:
    t = (
      tokens.reshape(1, pretrained_frames, -1, d)
      .permute(0, 2, 3, 1)
      .reshape(-1, d, pretrained_frames)
    )
    t = F.interpolate(t, size=frames, mode="linear")
    tokens = t.reshape(1, -1, d, frames).permute(0, 3, 1, 2).reshape(1, -1, d)
  if g0 != grid:
    t = tokens.reshape(-1, frames, g0, g0, d).reshape(-1, g0, g0, d).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
    tokens = t.permute(0, 2, 3, 1).reshape(-1, frames, grid, grid, d).flatten(1, 3)
  return torch.cat([extra, tokens], dim=1)


# A key that only one kind of file holds: how a file given in another's place is recognised.
# Expert files may hold the backbone too (whole state dicts), so the experts' markers come first.
MARKERS = (
  ("expert1", "film_gamma.weight", "Expert 1's decoder"),
  ("expert2", "decoder.main_head.", "Expert 2's decoder"),
  ("backbone", "vision_encoder.", "an InternVideo2 backbone"),
)


class _Source:
  """One checkpoint file with its canonical names."""

  def __init__(self, role: str, path: str, unsafe_pickle: bool):
    self.role, self.path = role, path
    sd = load_state_dict(path, unsafe_pickle=unsafe_pickle)
    self.tensors = {}
    self.junk = []
    for key in sd.keys():
      if role == "backbone":
        if key.startswith("vision_encoder."):
          self.tensors[key[len("vision_encoder.") :]] = key
        else:
          self.junk.append(key)
      else:
        self.tensors[canonical_expert_key(key)] = key
    self.sd = sd
    self.used: set[str] = set()
    self.mapped = is_memory_mapped(path)

  def display(self, name: str) -> str:
    if self.role == "backbone":
      return "vision_encoder." + name
    return expert_display_name(name)

  def get(self, name: str):
    original = self.tensors.get(name)
    if original is None:
      return None
    self.used.add(name)
    return self.sd[original]

  def has_lora(self) -> bool:
    return any(".lora_" in n for n in self.tensors)

  def check_role(self) -> None:
    """Refuse a file that holds another role's tensors (--expert1 and --expert2 swapped)."""
    for role, marker, holds in MARKERS:
      if any(marker in key for key in self.sd.keys()):
        if role != self.role:
          raise ConversionError(
            f"{self.path}: given as --{self.role}, but it holds {holds}; pass it as --{role}"
          )
        return


def _check_rank(src: _Source, rank: int) -> None:
  for name in sorted(src.tensors):
    if ".lora_A." in name:
      found = int(src.sd[src.tensors[name]].shape[0])
      if found != rank:
        raise ConversionError(
          f"{src.path}: {src.tensors[name]} has LoRA rank {found}, but model.lora.rank={rank}"
        )
      return


def new_output(output: str) -> str:
  """`output` as an absolute path, refused unless it is new and its parent folder exists."""
  output = os.path.abspath(output)
  if os.path.exists(output):
    raise ConversionError(f"{output}: output already exists; remove it or choose another --output")
  parent = os.path.dirname(output)
  if not os.path.isdir(parent):
    raise ConversionError(f"{output}: parent directory {parent} does not exist")
  return output


def convert(
  config,
  *,
  backbone: str,
  output: str,
  expert1: str | None = None,
  expert2: str | None = None,
  merge_lora: bool = False,
  unsafe_pickle: bool = False,
) -> dict:
  """Convert and write `output`; returns the conversion report. Writes nothing on failure."""
  t0 = time.time()
  output = new_output(output)
  config = config.copy_and_resolve_references()
  sources = _open_sources(backbone, expert1, expert2, unsafe_pickle)
  experts, stage1 = _configure(config, sources)
  arrays = _filled_arrays(config.model, sources, experts, stage1, output, t0)
  notes = [
    f"{sources[n].path} holds no LoRA (a stage-1 file): {n}'s adapters are zero" for n in stage1
  ]
  report = _report(sources, config.model, notes)
  report["without_lora"] = stage1
  for line in report["summary"]:
    _say(line)
  if merge_lora and config.model.lora.enabled and experts:
    arrays = _merged(arrays, config)
  _write(output, config, arrays, sources, report)
  _say(f"wrote {output} in {time.time() - t0:.1f} s")
  return report


def _open_sources(backbone: str, expert1, expert2, unsafe_pickle: bool) -> dict:
  """{role: _Source} for the files given, each checked to be the kind of file its flag names."""
  sources = {"backbone": _Source("backbone", backbone, unsafe_pickle)}
  for name, path in zip(EXPERT_NAMES, (expert1, expert2)):
    if path:
      sources[name] = _Source(name, path, unsafe_pickle)
  for src in sources.values():
    src.check_role()
  return sources


def _configure(config, sources) -> tuple[tuple, list]:
  """Set the model config's experts and LoRA from the files: (experts, the experts whose files
  hold no LoRA while another's does: stage-1 files, their adapters left at zero)."""
  mcfg = config.model
  experts = tuple(n for n in EXPERT_NAMES if n in sources)
  with config.unlocked():
    mcfg.experts = experts
    mcfg.lora_merged = False
    mcfg.lora.enabled = any(sources[n].has_lora() for n in experts)
  for n in experts:
    if sources[n].has_lora():
      _check_rank(sources[n], mcfg.lora.rank)
  stage1 = [n for n in experts if mcfg.lora.enabled and not sources[n].has_lora()]
  return experts, stage1


def _filled_arrays(mcfg, sources, experts, stage1, output: str, t0: float) -> dict:
  """Every tensor of the model, filled from the files, each index of its stacked axes (blocks,
  experts) exactly once."""
  from visage_jax import checkpoint as ckpt

  abstract = ckpt.abstract_flat_state(mcfg)
  slots = slots_for(abstract, experts, mcfg.backbone.depth)
  arrays = {path: np.empty(sds.shape, np.dtype(sds.dtype)) for path, sds in abstract.items()}
  filled = defaultdict(int)
  b = mcfg.backbone
  pos = (b.pretrained_num_frames, b.num_frames // b.tubelet_size, b.img_size // b.patch_size)
  _say(f"converting {len(slots)} tensors from {len(sources)} file(s) into {output}")
  step = max(len(slots) // 10, 1)
  for k, slot in enumerate(slots):
    _fill(slot, sources, arrays, filled, stage1, pos=pos)
    if (k + 1) % step == 0 or k + 1 == len(slots):
      _say(f"  {k + 1}/{len(slots)} tensors ({time.time() - t0:.0f} s)")
  stack_rank = {slot.path: len(slot.index) for slot in slots}
  for path, sds in abstract.items():
    stacked = int(np.prod(sds.shape[: stack_rank.get(path, 0)]))
    if filled[path] != stacked:
      raise ConversionError(f"internal: {'.'.join(map(str, path))} filled {filled[path]} times")
  return arrays


def _merged(arrays: dict, config) -> dict:
  """--merge_lora: each expert's LoRA folded into its own copy of the backbone kernels."""
  from visage_jax import checkpoint as ckpt
  from visage_jax.models.lora import fold_lora

  mcfg = config.model
  arrays = fold_lora(arrays, float(mcfg.lora.alpha) / float(mcfg.lora.rank))
  with config.unlocked():
    mcfg.lora_merged = True
  for path, sds in ckpt.abstract_flat_state(mcfg).items():
    if arrays[path].shape != tuple(sds.shape):
      raise ConversionError(f"internal: merged {path} has shape {arrays[path].shape}")
  _say("merged every expert's LoRA into its own copy of the backbone kernels")
  return arrays


def _write(output: str, config, arrays: dict, sources, report: dict) -> None:
  """The weights, the tensors kept beside them, the config and the report, all or nothing."""
  from visage_jax import checkpoint as ckpt
  from visage_jax.runtime.files import staged

  with staged(output, folder=True) as tmp:
    ckpt.save_params(os.path.join(tmp, ckpt.PARAMS_DIR), arrays)
    kept = _kept_tensors(sources)
    write_safetensors(os.path.join(tmp, ckpt.KEPT_FILE), kept)
    report["kept"] = len(kept)
    ckpt.write_config(tmp, config)
    with open(os.path.join(tmp, "conversion_report.json"), "w") as f:
      json.dump({k: v for k, v in report.items() if k != "summary"}, f, indent=2)


def _fill(slot: Slot, sources, arrays, filled, stage1, *, pos):
  src = sources[slot.source]
  target = arrays[slot.path]
  want = target.shape[len(slot.index) :]
  tensor = original = src.get(slot.name)
  if tensor is None:
    if slot.kind in ("lora_a", "lora_b") and slot.source in stage1:
      target[slot.index] = 0
      filled[slot.path] += 1
      return
    raise ConversionError(f"{src.path}: missing tensor {src.display(slot.name)}")
  if slot.kind == "pos_embed":
    tensor = interpolate_pos_embed(
      tensor, pretrained_frames=pos[0], frames=pos[1], grid=pos[2], file=src.path
    )
  leaf = str(slot.path[-1])
  try:
    converted = _torch_layout(tensor, slot.kind, leaf)
  except Exception:
    converted = None
  if converted is None or tuple(converted.shape) != tuple(want):
    raise ConversionError(
      f"{src.path}: {src.display(slot.name)} has shape {tuple(tensor.shape)}, but the model "
      f"expects {tuple(want)} in our layout for {'.'.join(map(str, slot.path))}"
    )
  target[slot.index] = to_numpy(converted, target.dtype)
  filled[slot.path] += 1
  if src.mapped:
    release_pages(original)


def _kept_tensors(sources) -> list[TensorSpec]:
  """The original's tensors that the model has no place for, named `ROLE/ORIGINAL_KEY`: every
  unused tensor of an expert file (fc1/fc2 LoRA under the fused MLP, the CLIP projector's LoRA,
  BatchNorm counters, centre-bias grids) and the backbone file's unused `vision_encoder.` tensors
  (CLIP heads, blocks beyond the depth). `visage-export --format=pytorch` writes them back."""

  def value(src, key):
    tensor = src.sd[key]
    array = exact_numpy(tensor).copy()
    if src.mapped:
      release_pages(tensor)
    return array

  specs = []
  for role, src in sources.items():
    for name, key in src.tensors.items():
      if name in src.used:
        continue
      tensor = src.sd[key]
      dtype = exact_numpy(tensor.reshape(-1)[:0]).dtype
      specs.append(
        TensorSpec(f"{role}/{key}", tuple(tensor.shape), dtype, lambda s=src, k=key: value(s, k))
      )
  return specs


def _report(sources, mcfg, notes) -> dict:
  import torch

  ignored: dict[str, dict[str, list[str]]] = {}
  summary = list(notes)
  dropped_b = 0.0
  dropped_n = 0
  for src in sources.values():
    cats: dict[str, list[str]] = defaultdict(list)
    for key in src.junk:
      cats["not part of the vision model"].append(key)
    for name, original in src.tensors.items():
      if name in src.used:
        continue
      why = classify_ignored(name)
      cats[why].append(original)
      if why.startswith("fc1/fc2 LoRA"):
        dropped_n += 1
        if ".lora_B." in name:
          dropped_b = max(dropped_b, float(src.sd[original].detach().to(torch.float32).abs().max()))
    ignored[src.path] = dict(cats)
    for why, keys in sorted(cats.items()):
      example = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
      summary.append(f"{src.path}: ignored {len(keys)} tensors: {why} ({example})")
  if dropped_n:
    summary.append(
      f"mlp_impl='fused': dropped {dropped_n} fc1/fc2 LoRA tensors, which the fused MLP never "
      f"applies (largest |B| dropped: {dropped_b:.6g})"
    )
  return {
    "sources": {role: src.path for role, src in sources.items()},
    "key_order": {role: list(src.tensors.values()) for role, src in sources.items()},
    "experts": list(mcfg.experts),
    "lora_enabled": bool(mcfg.lora.enabled),
    "ignored": ignored,
    "fc_lora_dropped": dropped_n,
    "fc_lora_max_abs_b": dropped_b,
    "notes": notes,
    "summary": summary,
  }
