"""Where a run's weights come from and where they go: training workdirs, `train.init` chains,
the partner expert of fused validation, and `visage-export`'s merged checkpoint."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from visage_jax import checkpoint as ckpt
from visage_jax.runtime.trees import named, to_host
from visage_jax.training import step as train_step
from visage_jax.training.checks import TrainError

STATE_DIR, BEST_DIR, INIT_DIR = "checkpoints", "best", "init_backbone"


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, ckpt.CONFIG_FILE)) and (
    os.path.isdir(os.path.join(path, STATE_DIR)) or os.path.isdir(os.path.join(path, BEST_DIR))
  )


def best_options(k: int, async_save: bool = True):
  return ocp.CheckpointManagerOptions(
    max_to_keep=k,
    best_fn=lambda m: m["cc"] if math.isfinite(m.get("cc", math.nan)) else -math.inf,
    best_mode="max",
    keep_checkpoints_without_metrics=False,
    enable_async_checkpointing=async_save,
  )


def _abstract_params(cfg) -> dict:
  """{model path: ShapeDtypeStruct on one device} of a run's `params` (trainable + statistics)."""
  model = nnx.eval_shape(lambda: train_step.init_model(cfg))
  _, trainable, stats, _ = train_step.split(model, cfg)
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  flat = {**named(trainable), **named(stats)}
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dev) for k, v in flat.items()}


def workdir_weights(workdir: str):
  """(config, {model path: numpy array}, description) of a workdir's best checkpoint by
  validation CC, or its latest if it never validated."""
  wcfg = ckpt.read_config(workdir)
  target = ckpt.nested_from_flat(_abstract_params(wcfg))
  for sub in (BEST_DIR, STATE_DIR):
    d = os.path.abspath(os.path.join(workdir, sub))
    if not os.path.isdir(d):
      continue
    opts = best_options(wcfg.train.best_k, False) if sub == BEST_DIR else None
    with ocp.CheckpointManager(d, item_names=("params",), options=opts) as mngr:
      step = mngr.best_step() if sub == BEST_DIR else mngr.latest_step()
      if step is None:
        continue
      restored = mngr.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
      ).params
    flat = {k: np.asarray(v) for k, v in ckpt.flat_from_nested(restored).items()}
    return wcfg, flat, f"{workdir} ({'best' if sub == BEST_DIR else 'latest'}, step {step})"
  raise TrainError(f"{workdir}: a workdir without any checkpoint")


def root_init(source: str) -> str:
  """The converted checkpoint at the start of a chain of workdirs."""
  seen = set()
  while is_workdir(source):
    if source in seen:
      raise TrainError(f"{source}: train.init chain loops")
    seen.add(source)
    source = ckpt.read_config(source).train.init
    if not source:
      raise TrainError(f"{sorted(seen)[0]}: its chain of train.init ends without a backbone")
  return source


def load_init(model, source: str, expert: str) -> list[str]:
  """Copy into `model` what `source` has for it. A converted checkpoint gives the backbone's base
  weights and, if present, this expert's neck/decoder and LoRA; a workdir gives its own init's,
  then its best (or latest) weights on top. Returns what was loaded."""
  if is_workdir(source):
    wcfg, flat, desc = workdir_weights(source)
    if train_step.expert_name(wcfg) != expert:
      raise TrainError(f"{source}: trained {train_step.expert_name(wcfg)}, not {expert}")
    loaded = load_init(model, wcfg.train.init, expert) if wcfg.train.init else []
    state = nnx.state(model)
    n = 0
    for path, var in nnx.to_flat_state(state):
      key = tuple(str(p) for p in path)
      if key in flat:
        if tuple(flat[key].shape) != tuple(var.get_value().shape):
          raise TrainError(
            f"{source}: {'/'.join(key)} has shape {flat[key].shape}, this model wants "
            f"{var.get_value().shape}"
          )
        var.set_value(flat[key].astype(var.get_value().dtype))
        n += 1
    nnx.update(model, state)
    return [*loaded, f"{n} tensors from {desc}"]
  if not os.path.isfile(os.path.join(source, ckpt.CONFIG_FILE)):
    raise TrainError(f"{source}: neither a visage-convert output nor a training workdir")
  src_cfg, src = ckpt.load_model(source)
  if src_cfg.model.lora_merged:
    raise TrainError(f"{source}: LoRA is merged into per-expert backbones; train from unmerged")
  src_flat = dict(nnx.to_flat_state(nnx.state(src)))
  src_experts = tuple(src_cfg.model.experts)
  state = nnx.state(model)
  loaded = set()
  for path, var in nnx.to_flat_state(state):
    key = tuple(path)
    if key[0] == "backbone" and key[-1] in ("lora_a", "lora_b"):
      if key in src_flat and expert in src_experts:
        e = src_experts.index(expert)
        value = src_flat[key].get_value()
        value = value[:, e : e + 1] if "blocks" in key else value[e : e + 1]
        var.set_value(value)
        loaded.add("lora")
    elif key in src_flat:
      var.set_value(src_flat[key].get_value())
      loaded.add(key[0])
  nnx.update(model, state)
  return sorted(loaded)


def partner_model(cfg, source: str):
  """(name, model) of the other expert from a workdir or a converted checkpoint, for fused
  validation. It gets its own copy of the backbone's base weights (freed once the validator has
  computed its maps, `validation.partner_maps`)."""
  from visage_jax.models.visage import ViSAGE

  name = "expert2" if train_step.expert_name(cfg) == "expert1" else "expert1"
  if is_workdir(source):
    pcfg = ckpt.read_config(source)
    if train_step.expert_name(pcfg) != name:
      raise TrainError(f"{source}: train.partner must hold {name}; it trained the same expert")
    model = train_step.init_model(pcfg)
  else:
    try:
      ccfg = ckpt.read_config(source)
    except ckpt.CheckpointError as e:
      raise TrainError(f"train.partner: {e}") from None
    if name not in tuple(ccfg.model.experts):
      raise TrainError(f"{source}: train.partner has no {name} (it has {ccfg.model.experts})")
    mcfg = ccfg.model.copy_and_resolve_references()
    mcfg.experts = (name,)
    model = ViSAGE(mcfg, rngs=nnx.Rngs(0))
  load_init(model, source, name)
  return name, model


def export(workdirs: list[str], output: str, *, log=print) -> str:
  """One loadable checkpoint (both experts, fused maps) from training workdirs, one per expert
  (see `merged_weights`), with the kept tensors of the backbone's conversion beside it."""
  cfg, flat, report = merged_weights(workdirs, log=log)
  kept = ckpt.kept_tensors_path(report["backbone"])
  ckpt.save_flat(
    output,
    cfg,
    flat,
    extra={"export_report.json": report},
    copies={ckpt.KEPT_FILE: kept} if kept else None,
  )
  return output


def merged_weights(workdirs: list[str], *, log=print):
  """(config, {path: numpy array}, report) of one model with every workdir's expert: each
  expert's best (or latest) weights over the backbone at the root of the first workdir's init
  chain. An expert trained without LoRA gets zero LoRA (an exact no-op) and is listed in the
  report's `without_lora`."""
  if not workdirs:
    raise TrainError("export: no workdir given")
  parts, sources = _experts_of(workdirs, log)
  base = _shared_backbone(workdirs)
  bcfg, backbone = ckpt.load_model(base)
  names = tuple(n for n in ("expert1", "expert2") if n in parts)
  out_cfg = _merged_config(bcfg, {n: parts[n][0] for n in names})
  backbone_flat = {
    tuple(str(q) for q in p): to_host(v.get_value())
    for p, v in nnx.to_flat_state(nnx.state(backbone))
  }
  flat = {
    path: _merged_tensor(path, sds, parts, names, backbone_flat)
    for path, sds in ckpt.abstract_flat_state(out_cfg.model).items()
  }
  report = {
    "workdirs": [os.path.abspath(w) for w in workdirs],
    "backbone": os.path.abspath(base),
    "weights": sources,
    "without_lora": [n for n in names if parts[n][0].train.stage != 2],
  }
  return out_cfg, flat, report


def _experts_of(workdirs, log) -> tuple[dict, dict]:
  """({expert: (workdir config, its flat weights)}, {expert: where its weights come from}), one
  workdir an expert."""
  parts, sources = {}, {}
  for w in workdirs:
    if not is_workdir(w):
      raise TrainError(f"{w}: not a training workdir (no config.json and checkpoints/)")
    wcfg, flat, desc = workdir_weights(w)
    name = train_step.expert_name(wcfg)
    if name in parts:
      raise TrainError(f"{w}: a second workdir for {name}")
    parts[name] = (wcfg, flat)
    sources[name] = desc
    log(f"{name}: {desc}")
  return parts, sources


def _shared_backbone(workdirs) -> str:
  """The checkpoint at the root of every workdir's init chain: one, or a `TrainError`."""
  base = root_init(workdirs[0])
  for w in workdirs[1:]:
    if os.path.abspath(root_init(w)) != os.path.abspath(base):
      raise TrainError(f"{w}: starts from {root_init(w)}, not {base}; the backbone must be shared")
  return base


def _merged_config(bcfg, expert_cfgs: dict):
  """The backbone's model config with the experts' heads (from the first expert's workdir), LoRA
  if any expert trained it (stage 2)."""
  first = next(iter(expert_cfgs.values()))
  out_cfg = first.copy_and_resolve_references()
  out_cfg.model = bcfg.model.copy_and_resolve_references()
  for k in ("neck_dim", "decoder_dim", "fusion_alpha", "fusion_eps", "output_size"):
    out_cfg.model[k] = first.model[k]
  out_cfg.model.experts = tuple(expert_cfgs)
  out_cfg.model.lora.enabled = any(c.train.stage == 2 for c in expert_cfgs.values())
  out_cfg.model.lora_merged = False
  return out_cfg


def _merged_tensor(path, sds, parts: dict, names, backbone_flat: dict) -> np.ndarray:
  """One tensor of the merged model: the experts' LoRA side by side (zero B for an expert
  without), an expert's own weights, or the backbone's."""
  key = tuple(str(q) for q in path)
  if key[0] == "backbone" and key[-1] in ("lora_a", "lora_b"):
    axis = 1 if "blocks" in key else 0  # the experts' axis
    pieces = []
    for n in names:
      v = parts[n][1].get(key)
      if v is None:  # no LoRA for this expert: B = 0 makes any A a no-op
        shape = list(sds.shape)
        shape[axis] = 1
        v = np.zeros(shape, sds.dtype)
      pieces.append(v)
    return np.concatenate(pieces, axis=axis)
  if key[0] in parts:
    return parts[key[0]][1][key]
  return backbone_flat[key]
