"""Converted checkpoints on disk: `DIR/config.json` (the resolved config) and `DIR/params` (Orbax).

A directory written here loads with no other argument: `load_model(DIR)`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from visage_jax.models.visage import ViSAGE
from visage_jax.runtime.config_file import (  # noqa: F401 (re-exported: ckpt.read_config, …)
  CONFIG_FILE,
  CheckpointError,
  read_config,
  write_config,
  written_at,
)
from visage_jax.runtime.files import staged

PARAMS_DIR = "params"
# Tensors of the original files that the model does not use (written by visage-convert, see
# conversion/convert.py), kept so that an export writes the original's files back exactly.
KEPT_FILE = "kept_tensors.safetensors"


def _key(path) -> tuple[str, ...]:
  return tuple(str(p) for p in path)


def nested_from_flat(flat: dict) -> dict:
  """{(a, b, c): x} → {"a": {"b": {"c": x}}} with string keys (Orbax stores string keys)."""
  out: dict = {}
  for path, value in flat.items():
    node = out
    for p in _key(path)[:-1]:
      node = node.setdefault(p, {})
    node[_key(path)[-1]] = value
  return out


def flat_from_nested(nested: dict, prefix=()) -> dict:
  out = {}
  for k, v in nested.items():
    if isinstance(v, dict):
      out.update(flat_from_nested(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def abstract_model(model_cfg) -> ViSAGE:
  """The model with shapes and dtypes only: no memory is allocated."""
  return nnx.eval_shape(lambda: ViSAGE(model_cfg, rngs=nnx.Rngs(0)))


def abstract_flat_state(model_cfg) -> dict:
  """{path: jax.ShapeDtypeStruct} for every variable of the model (params and batch stats)."""
  state = nnx.state(abstract_model(model_cfg))
  return {tuple(p): v.get_value() for p, v in nnx.to_flat_state(state)}


# Bytes Orbax may hold in flight while writing or reading; its default (96 GB) lets a save of the
# 6B backbone copy most of it at once, which does not fit beside the arrays on a 24 GB machine.
CONCURRENT_GB = 2


def _no_copy_registry():
  """Orbax's handlers, except that numpy arrays are written without the defensive deep copy
  (Orbax's default doubles the host memory of a save: 12 GB more for the 6B backbone). Safe here:
  nothing modifies the arrays while the synchronous save runs."""
  from orbax.checkpoint._src.serialization import type_handler_registry as thr
  from orbax.checkpoint._src.serialization import type_handlers as th

  return thr.create_type_handler_registry(
    (jax.Array, th.ArrayHandler()),
    (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)),
  )


def save_params(directory: str, flat: dict) -> None:
  """Write {path: numpy array} as one Orbax checkpoint at `directory` (which must not exist)."""
  handler = ocp.PyTreeCheckpointHandler(
    save_concurrent_gb=CONCURRENT_GB, type_handler_registry=_no_copy_registry()
  )
  with ocp.Checkpointer(handler) as ckptr:
    ckptr.save(os.path.abspath(directory), args=ocp.args.PyTreeSave(nested_from_flat(flat)))


def _restore(directory: str, handler, args) -> dict:
  """{path of strings: array} restored from `directory`'s params by `handler` with `args`; any
  failure is one CheckpointError naming the directory."""
  params_dir = os.path.abspath(os.path.join(directory, PARAMS_DIR))
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{directory}: no {PARAMS_DIR}/ directory")
  try:
    with ocp.Checkpointer(handler) as ckptr:
      return flat_from_nested(ckptr.restore(params_dir, args=args))
  except Exception as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{directory}: cannot restore parameters: {msg}") from None


def _restore_gb(target: dict) -> int:
  """Orbax's in-flight budget for a restore: CONCURRENT_GB, or the largest array's size if more
  (Orbax refuses an array bigger than the budget: the 6B stacked qkv kernels are 2.9 GB)."""
  largest = max(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in target.values())
  return max(CONCURRENT_GB, -(-largest // 10**9))


def load_model(directory: str, *, config=None, model_overrides: dict | None = None):
  """(config, model) from a converted checkpoint directory.

  `config`: its config.json as `read_config` gave it, where the caller has read it already (it is
  not changed). `model_overrides` sets fields of `config.model` that do not change parameter
  shapes, such as `{"dtype": "bfloat16"}` or `{"backbone.remat_policy": "full"}`.
  """
  cfg = read_config(directory) if config is None else copy.deepcopy(config)
  stored_param_dtype = cfg.model.param_dtype
  for k, v in (model_overrides or {}).items():
    node = cfg.model
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  model = abstract_model(cfg.model)
  graphdef, state = nnx.split(model)
  flat_abstract = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(state)}
  device = jax.local_devices()[0]
  target = {}
  for path, sds in flat_abstract.items():
    dtype = sds.dtype
    if path[0] == "backbone" and path[-1] not in ("lora_a", "lora_b"):
      dtype = np.dtype(jax.numpy.dtype(stored_param_dtype))
    target[path] = jax.ShapeDtypeStruct(
      sds.shape, dtype, sharding=jax.sharding.SingleDeviceSharding(device)
    )
  handler = ocp.StandardCheckpointHandler(restore_concurrent_gb=_restore_gb(target))
  restored_flat = _restore(directory, handler, ocp.args.StandardRestore(nested_from_flat(target)))
  for path, var in nnx.to_flat_state(state):
    value = restored_flat[_key(path)]
    want = flat_abstract[tuple(path)]
    var.set_value(value.astype(want.dtype) if value.dtype != want.dtype else value)
  return cfg, nnx.merge(graphdef, state)


def kept_tensors_path(directory: str) -> str | None:
  path = os.path.join(directory, KEPT_FILE)
  return path if os.path.isfile(path) else None


def load_arrays(directory: str, keep=None) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, {path: numpy array}) of a checkpoint directory without building the model: only
  the paths for which `keep(path)` is true are read (all without `keep`)."""
  cfg = read_config(directory)
  wanted = {p: s for p, s in abstract_flat_state(cfg.model).items() if keep is None or keep(p)}
  args = {p: ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype) for p, s in wanted.items()}
  handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=_restore_gb(wanted))
  restore = ocp.args.PyTreeRestore(
    item=nested_from_flat(wanted), restore_args=nested_from_flat(args), partial_restore=True
  )
  flat = _restore(directory, handler, restore)
  return cfg, {p: flat[_key(p)] for p in wanted}


def save_flat(
  directory: str, config: ml_collections.ConfigDict, flat: dict, extra=None, copies=None
) -> None:
  """Write a loadable checkpoint (config.json + params) from {path tuple: array}, checked against
  the config's model: every variable present with its shape. Written to a temporary directory and
  renamed, so `directory` is either whole or absent. `extra`: {file name: JSON object} beside it;
  `copies`: {file name: path of a file to copy beside it}."""
  want = abstract_flat_state(config.model)
  got = {_key(p): v for p, v in flat.items()}
  missing = [p for p in want if _key(p) not in got]
  if missing:
    raise CheckpointError(f"{directory}: no value for {'/'.join(_key(missing[0]))}")
  for p, sds in want.items():
    if tuple(got[_key(p)].shape) != tuple(sds.shape):
      raise CheckpointError(
        f"{directory}: {'/'.join(_key(p))} has shape {tuple(got[_key(p)].shape)}, the config "
        f"wants {tuple(sds.shape)}"
      )
  if os.path.exists(directory):
    raise CheckpointError(f"{directory}: exists; refusing to overwrite")
  with staged(directory, folder=True) as tmp:
    arrays = {p: np.asarray(got[_key(p)]) for p in want}
    save_params(os.path.join(tmp, PARAMS_DIR), arrays)
    write_config(tmp, config)
    for name, obj in (extra or {}).items():
      with open(os.path.join(tmp, name), "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    for name, path in (copies or {}).items():
      shutil.copyfile(path, os.path.join(tmp, name))
