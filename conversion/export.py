"""`visage-export --format=pytorch|safetensors`: our weights → the original's checkpoint files.

    visage-export --format=pytorch --checkpoint=DIR --output=OUT [--full_state_dict]
    visage-export --format=pytorch --workdir=E1 --workdir=E2 --output=OUT

For each expert, `OUT/expertN.pth` holds what the original's stage-2 training saves (stage 1: no
LoRA): the LoRA A/B tensors under peft's names and every `decoder.*`, `dim_reducers.*`, `film_*`
entry with BatchNorm buffers and Expert 1's centre-bias grids, channels first, float32. The
original loads it with `model.load_state_dict(torch.load(path), strict=False)` over its backbone;
`--full_state_dict` writes `model.state_dict()` instead (strict). A backbone that did not come from
an original file (trained with no `train.init`) is written as an InternVideo2 checkpoint,
`OUT/backbone.pt`. `OUT/export.json` records the config, the source and a SHA-256 per tensor.

What the model has no place for comes from the checkpoint's kept tensors (`kept_tensors.
safetensors`, written by visage-convert) when it has them, else:
- fc1/fc2 LoRA under `mlp_impl="fused"` (never applied, never trained) and the CLIP projector's
  LoRA (never used): zeros, which in the original's plain path apply nothing either;
- BatchNorm `num_batches_tracked`: 0 (the original's BatchNorm, momentum 0.1, never reads it);
- Expert 1's `center_bias.xx/yy`: rebuilt as the original builds them.
Every tensor is produced when its turn comes and written at once (`conversion.torch_io`), so the
export holds one tensor at a time beside the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import numpy as np

from conversion.convert import interpolate_pos_embed, new_output
from conversion.keymap import Slot, expert_display_name, slots_for
from conversion.torch_io import (
  SAFETENSORS_NUMPY,
  ConversionError,
  TensorSpec,
  exact_numpy,
  torch_dtype,
  write_pth,
  write_safetensors,
)

FORMATS = ("pytorch", "safetensors")
ORIGINAL_LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
PEFT_PREFIX = "encoder.vision_encoder.base_model.model."
# The CLIP projector's output width, for its (unused) LoRA when no kept tensor gives it: 768 for
# both released backbones; the golden tiny model's is half its width.
CLIP_EMBED_DIM = {3200: 768, 1408: 768}
SIDECAR = "export.json"


@dataclasses.dataclass
class Weights:
  """A model's weights as numpy arrays with what is known about where they came from."""

  config: object  # the resolved ml_collections config
  flat: dict  # {our parameter path: numpy array}
  kept: str | None  # path of the kept tensors of the backbone's conversion, if any
  without_lora: tuple  # experts trained or converted without LoRA (stage 1)
  key_order: dict  # {expert: the original file's key order}, when converted from one
  backbone_original: bool  # the backbone came from an original InternVideo2 file
  source: dict  # for the sidecar


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _conversion_report(root: str) -> dict:
  """The conversion report of a converted checkpoint; empty when the checkpoint holds a backbone
  we initialised (`WORKDIR/init_backbone`), which no original file gave."""
  return _read_json(os.path.join(root, "conversion_report.json"))


def _is_backbone_base(path) -> bool:
  return str(path[0]) == "backbone" and str(path[-1]) not in ("lora_a", "lora_b")


def weights_of_checkpoint(directory: str, *, with_backbone: bool = True) -> Weights:
  """The checkpoint's weights as numpy arrays. Without `with_backbone` the backbone's base weights
  are not read when they came from an original file (the expert files do not hold them)."""
  from visage_jax import checkpoint as ckpt

  exported = _read_json(os.path.join(directory, "export_report.json"))
  converted = _conversion_report(exported.get("backbone", directory))
  skip = bool(converted) and not with_backbone
  cfg, flat = ckpt.load_arrays(directory, keep=lambda p: not (skip and _is_backbone_base(p)))
  # an exported checkpoint's report says which experts have no LoRA; else its conversion's does
  report = exported or converted
  return Weights(
    config=cfg,
    flat=flat,
    kept=ckpt.kept_tensors_path(directory),
    without_lora=tuple(report.get("without_lora", ())),
    key_order=converted.get("key_order", {}),
    backbone_original=bool(converted),
    source={"checkpoint": os.path.abspath(directory), "export_report": exported or None},
  )


def weights_of_workdirs(workdirs: list[str], log=print) -> Weights:
  from visage_jax import checkpoint as ckpt
  from visage_jax.training.weights import merged_weights

  cfg, flat, report = merged_weights(workdirs, log=log)
  converted = _conversion_report(report["backbone"])
  return Weights(
    config=cfg,
    flat={tuple(p): np.asarray(v) for p, v in flat.items()},
    kept=ckpt.kept_tensors_path(report["backbone"]),
    without_lora=tuple(report["without_lora"]),
    key_order=converted.get("key_order", {}),
    backbone_original=bool(converted),
    source=report,
  )


def check_expressible(cfg) -> None:
  """Refuse, naming the field, a model the original's code cannot build."""
  m = cfg.model
  if m.lora_merged:
    raise ConversionError(
      "model.lora_merged=True: the LoRA is folded into per-expert backbones and cannot be "
      "written as the original's adapters; export the unmerged checkpoint"
    )
  if len(tuple(m.backbone.taps)) != 4:
    raise ConversionError(
      f"model.backbone.taps={tuple(m.backbone.taps)}: the original's decoders take exactly 4 taps"
    )
  extra = [t for t in m.lora.targets if t not in ORIGINAL_LORA_TARGETS]
  if m.lora.enabled and extra:
    raise ConversionError(
      f"model.lora.targets has {extra}: the original adapts only {list(ORIGINAL_LORA_TARGETS)}"
    )


# ----------------------------------------------------------------------------- layouts and names


def original_layout(array, slot: Slot):
  """One slot's array in the original's layout, as a view: the inverse of conversion.convert's
  layout change. Applied to a zero-stride array of a shape, it gives the original's shape."""
  if slot.kind == "lora_b" and slot.name.startswith("patch_embed."):
    return array.T.reshape(array.shape[1], array.shape[0], 1, 1, 1)  # → Conv3d 1×1×1 (D, r, …)
  if str(slot.path[-1]) in ("kernel", "lora_a", "lora_b"):
    n = array.ndim  # Linear (in, out) → (out, in); (k…, in, out) → ConvNd (out, in, k…)
    return array.T if n == 2 else array.transpose(n - 1, n - 2, *range(n - 2))
  return array


def _param_spec(name: str, flat: dict, slot: Slot, dtype=None) -> TensorSpec:
  stacked = flat[slot.path]
  dtype = np.dtype(dtype or stacked.dtype)
  blank = np.broadcast_to(np.zeros((), dtype), stacked.shape[len(slot.index) :])
  shape = original_layout(blank, slot).shape

  def value():  # np.array, not ascontiguousarray, which would make a scalar 1-D
    return np.array(original_layout(stacked[slot.index], slot), dtype=dtype, order="C")

  return TensorSpec(name, shape, dtype, value)


def _constant(name: str, shape: tuple, dtype, fill=0) -> TensorSpec:
  return TensorSpec(name, tuple(shape), np.dtype(dtype), lambda: np.full(shape, fill, dtype))


_WRAPPED = re.compile(
  r"^(blocks\.\d+\.attn\.(?:qkv|proj)|blocks\.\d+\.mlp\.fc[12]|patch_embed\.proj"
  r"|clip_projector\.cross_attn\.proj)\.(weight|bias)$"
)


def full_backbone_name(name: str) -> str:
  """A backbone tensor's name (`blocks.3.attn.qkv.weight`) in the stage-2 model's state dict:
  under peft's wrapper, through the feature-tap wrapper, LoRA-wrapped layers' own weights as
  `base_layer`."""
  name = _WRAPPED.sub(r"\1.base_layer.\2", name)
  return PEFT_PREFIX + re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.block.", name)


# ----------------------------------------------------------------------------- one expert's file


def _lora_defaults(cfg) -> list[TensorSpec]:
  """The adapters the original builds that our model may not hold (see the module doc), zero."""
  b, r = cfg.model.backbone, int(cfg.model.lora.rank)
  d, hidden = int(b.embed_dim), int(round(b.embed_dim * b.mlp_ratio))
  clip_dim = CLIP_EMBED_DIM.get(d, d // 2)
  specs = []
  for i in range(int(b.depth)):
    for module, a_shape, b_shape in (
      ("attn.qkv", (r, d), (3 * d, r)),
      ("attn.proj", (r, d), (d, r)),
      ("mlp.fc1", (r, d), (hidden, r)),
      ("mlp.fc2", (r, hidden), (d, r)),
    ):
      stem = f"{PEFT_PREFIX}blocks.{i}.block.{module}"
      specs += [_constant(f"{stem}.lora_A.default.weight", a_shape, np.float32)]
      specs += [_constant(f"{stem}.lora_B.default.weight", b_shape, np.float32)]
  stem = f"{PEFT_PREFIX}clip_projector.cross_attn.proj"
  specs += [_constant(f"{stem}.lora_A.default.weight", (r, d), np.float32)]
  specs += [_constant(f"{stem}.lora_B.default.weight", (clip_dim, r), np.float32)]
  return specs


def _center_grids(size: int) -> list[TensorSpec]:
  """Expert 1's centre-bias grids as the original builds them: torch.linspace(-1, 1) (torch's
  vectorised kernel, which may differ from its scalar formula in the last bit) along x and y."""
  import torch

  def grid(axis):
    line = torch.linspace(-1.0, 1.0, size, dtype=torch.float32).numpy()
    line = line[None, :] if axis == "x" else line[:, None]
    return np.ascontiguousarray(np.broadcast_to(line, (size, size)))

  return [
    TensorSpec("decoder.center_bias.xx", (size, size), np.dtype(np.float32), lambda: grid("x")),
    TensorSpec("decoder.center_bias.yy", (size, size), np.dtype(np.float32), lambda: grid("y")),
  ]


def _kept_specs(kept: str | None, role: str) -> list[TensorSpec]:
  """The kept tensors of `role` (an expert or "backbone"), under their original names."""
  if not kept:
    return []
  from safetensors import safe_open

  def value(key):
    with safe_open(kept, framework="pt") as f:
      return exact_numpy(f.get_tensor(key))

  out = []
  with safe_open(kept, framework="pt") as f:
    for key in f.keys():
      if key.startswith(role + "/"):
        piece = f.get_slice(key)
        shape, dtype = tuple(piece.get_shape()), SAFETENSORS_NUMPY[piece.get_dtype()]
        out.append(TensorSpec(key[len(role) + 1 :], shape, dtype, lambda k=key: value(k)))
  return out


def expert_specs(weights: Weights, expert: str, *, full: bool = False) -> list[TensorSpec]:
  """Every tensor of the original's file for `expert`, in the original's order where known."""
  cfg = weights.config
  m = cfg.model
  with_lora = bool(m.lora.enabled) and expert not in weights.without_lora
  slots = slots_for(weights.flat, tuple(m.experts), int(m.backbone.depth))
  specs: dict[str, TensorSpec] = {}
  if full:
    for spec in backbone_specs(weights, full=True):
      specs[spec.name] = spec
  for slot in slots:
    if slot.source != expert or (slot.kind.startswith("lora") and not with_lora):
      continue
    name = expert_display_name(slot.name) if slot.kind.startswith("lora") else slot.name
    specs[name] = _param_spec(name, weights.flat, slot, np.float32)
  produced = set(specs)
  defaults = _lora_defaults(cfg) if with_lora else []
  for name in produced:
    if name.endswith(".running_var"):
      counter = name[: -len("running_var")] + "num_batches_tracked"
      defaults.append(_constant(counter, (), np.int64))
  if any(s.startswith("decoder.center_bias.") for s in specs):
    defaults += _center_grids(int(m.output_size))
  for spec in [*defaults, *_kept_specs(weights.kept, expert)]:
    if spec.name in produced or (".lora_" in spec.name and not with_lora):
      continue
    specs[spec.name] = spec  # a kept tensor replaces its default
  ordered = _ordered(list(specs.values()), weights.key_order.get(expert, []))
  if not full:
    return ordered
  rank = {k: i for i, k in enumerate(weights.key_order.get("backbone", []))}
  encoder = [s for s in ordered if s.name.startswith(PEFT_PREFIX)]
  encoder.sort(key=lambda s: _full_rank(s, rank))
  return encoder + [s for s in ordered if not s.name.startswith(PEFT_PREFIX)]


def backbone_specs(weights: Weights, *, full: bool) -> list[TensorSpec]:
  """The backbone as an InternVideo2 checkpoint (`vision_encoder.NAME`, the position embedding at
  the model's frame count), or with `full` as the stage-2 model's state dict names it."""
  m = weights.config.model
  slots = slots_for(weights.flat, tuple(m.experts), int(m.backbone.depth))
  rename = full_backbone_name if full else (lambda n: "vision_encoder." + n)
  specs = {}
  for slot in slots:
    if slot.source == "backbone":
      name = rename(slot.name)
      specs[name] = _param_spec(name, weights.flat, slot)
  kept = _kept_specs(weights.kept, "backbone")
  if full and not kept:
    raise ConversionError(
      "--full_state_dict: this checkpoint has no kept CLIP heads of an original backbone file "
      "(its backbone was not converted from one); export the expert files instead"
    )
  for spec in kept:
    name = rename(spec.name[len("vision_encoder.") :])
    if spec.name == "vision_encoder.clip_pos_embed":
      spec = _stretched_pos_embed(spec, m.backbone)
    specs.setdefault(name, dataclasses.replace(spec, name=name))
  return list(specs.values())


def _stretched_pos_embed(spec: TensorSpec, b) -> TensorSpec:
  """The kept CLIP position embedding stretched to the model's frames as the original's loader
  stretches both position embeddings."""
  import torch

  grid, frames = b.img_size // b.patch_size, b.num_frames // b.tubelet_size
  shape = (1, 1 + frames * grid * grid, spec.shape[-1])

  def value():
    tensor = torch.from_numpy(np.asarray(spec.value(), np.float32))
    out = interpolate_pos_embed(
      tensor, pretrained_frames=b.pretrained_num_frames, frames=frames, grid=grid, file="kept"
    )
    return exact_numpy(out.to(torch_dtype(spec.dtype)))

  return dataclasses.replace(spec, shape=shape, value=value)


_LORA_MODULE_RANK = {"attn.qkv": 0, "attn.proj": 1, "mlp.fc1": 2, "mlp.fc2": 3}
_LAYER_PARTS = (
  "base_layer.weight",
  "base_layer.bias",
  "lora_A.default.weight",
  "lora_B.default.weight",
)


def _full_rank(spec: TensorSpec, backbone_order: dict) -> tuple:
  """Where an encoder tensor comes in the original's full state dict: where its layer's weight
  comes in the backbone file (the model's registration order), base weights before adapters."""
  rest = re.sub(r"^blocks\.(\d+)\.block\.", r"blocks.\1.", spec.name[len(PEFT_PREFIX) :])
  part = next((p for p in _LAYER_PARTS if rest.endswith("." + p)), None)
  if part is None:
    return (backbone_order.get("vision_encoder." + rest, len(backbone_order)), 0)
  layer = rest[: -len(part) - 1]
  return (
    backbone_order.get(f"vision_encoder.{layer}.weight", len(backbone_order)),
    1 + _LAYER_PARTS.index(part),
  )


def _ordered(specs: list[TensorSpec], key_order: list[str]) -> list[TensorSpec]:
  """The original file's order when the expert was converted from one; else the adapters as peft
  registers them (patch embedding, then block by block), then the rest."""
  if key_order:
    rank = {k: i for i, k in enumerate(key_order)}
    return sorted(specs, key=lambda s: rank.get(s.name, len(rank)))

  def lora_rank(name):
    block = re.search(r"\.blocks\.(\d+)\.block\.(attn\.qkv|attn\.proj|mlp\.fc[12])\.", name)
    if block:
      return (int(block.group(1)), _LORA_MODULE_RANK[block.group(2)], name)
    return (-1 if ".patch_embed." in name else 1 << 30, 0, name)

  lora = sorted((s for s in specs if ".lora_" in s.name), key=lambda s: lora_rank(s.name))
  return lora + [s for s in specs if ".lora_" not in s.name]


# ----------------------------------------------------------------------------- the export


def export(weights: Weights, output: str, *, fmt: str = "pytorch", full: bool = False, log=print):
  """Write the original's files for every expert of `weights` (and its backbone when it did not
  come from an original file) into `output`, whole or not at all. Returns the sidecar."""
  if fmt not in FORMATS:
    raise ConversionError(f"--format={fmt}: choose one of {', '.join(FORMATS)} or orbax")
  check_expressible(weights.config)
  output = new_output(output)
  ext = ".pth" if fmt == "pytorch" else ".safetensors"
  jobs = [
    (f"{'full_' if full else ''}{e}{ext}", expert_specs(weights, e, full=full), None)
    for e in weights.config.model.experts
  ]
  if not weights.backbone_original:
    name = "backbone" + (".pt" if fmt == "pytorch" else ext)
    jobs.append((name, backbone_specs(weights, full=False), "module"))
  from visage_jax.runtime.files import staged

  files = {}
  with staged(output, folder=True) as tmp:
    for name, specs, nest in jobs:
      t0 = time.time()
      path = os.path.join(tmp, name)
      if fmt == "pytorch":
        digests = write_pth(path, specs, nest=nest)
      else:
        digests = write_safetensors(path, specs, {"format": "pt"})
      files[name] = {"tensors": len(specs), "bytes": os.path.getsize(path), "sha256": digests}
      log(
        f"{name}: {len(specs)} tensors, {files[name]['bytes'] / 2**20:.1f} MiB "
        f"({time.time() - t0:.1f} s)"
      )
    sidecar = _sidecar(weights, fmt, full, files)
    with open(os.path.join(tmp, SIDECAR), "w") as f:
      json.dump(sidecar, f, indent=2)
      f.write("\n")
  return sidecar


def _sidecar(weights: Weights, fmt: str, full: bool, files: dict) -> dict:
  m = weights.config.model
  fused = m.backbone.mlp_impl == "fused"
  return {
    "format": fmt,
    "full_state_dict": full,
    "source": weights.source,
    "lora": {"enabled": bool(m.lora.enabled), "rank": m.lora.rank, "alpha": m.lora.alpha},
    "without_lora": list(weights.without_lora),
    "unused_tensors": (
      "kept from the original files (kept_tensors.safetensors)"
      if weights.kept
      else "zeros (LoRA), 0 (num_batches_tracked), rebuilt (centre-bias grids)"
    ),
    "fc_lora": "not applied by mlp_impl='fused'" if fused else "trained and applied (plain MLP)",
    "config": json.loads(weights.config.to_json()),
    "files": files,
  }
