"""A training run's config resolved and checked once, before any work, each mistake a one-line
`TrainError`: `checked_config` (the values, the weights' sources, the data, the workdir) needs no
JAX, so `visage-train` tells such a mistake before it imports JAX (over a second); `on_devices`
then checks the mesh, the batch's split and the weights' sharding, and gives the `CheckedRun`
that `loop.run` takes and trusts. `check_run` is both, for callers from Python."""

from __future__ import annotations

import dataclasses
import os

from visage_jax.runtime.config_file import CONFIG_FILE, CheckpointError, read_config


class TrainError(Exception):
  """A bad config, workdir, init or partner: the message names the field or path and the problem."""


# The names of `validation.VARIANTS` (train.val_metrics), which imports JAX.
VAL_METRICS = ("challenge", "original")


def resolved(cfg):
  """`cfg` with its references resolved and its paths (train.init, train.partner, data.dir)
  made absolute."""
  cfg = cfg.copy_and_resolve_references()
  for section, key in (("train", "init"), ("train", "partner"), ("data", "dir")):
    if cfg[section][key]:
      cfg[section][key] = os.path.abspath(cfg[section][key])
  return cfg


@dataclasses.dataclass(frozen=True)
class CheckedRun:
  """What `loop.run` trains: the resolved config, the workdir (absolute) and the mesh, checked."""

  cfg: object  # ml_collections.ConfigDict
  workdir: str
  mesh: object  # jax.sharding.Mesh


def checked_config(cfg, workdir: str):
  """`cfg` resolved (`resolved`), its values, weights' sources and data checked, and the
  workdir's own config.json, where it has one, readable. No JAX."""
  cfg = resolved(cfg)
  check_config(cfg)
  check_workdir(workdir)
  return cfg


def on_devices(cfg, workdir: str) -> CheckedRun:
  """A `checked_config` config placed on this process's devices: the mesh made, the batch's split
  and the weights' sharding over it checked (this imports JAX)."""
  mesh = train_mesh(cfg)
  check_batch(cfg, mesh)
  _check_sharding(cfg, mesh)
  return CheckedRun(cfg, os.path.abspath(workdir), mesh)


def check_run(cfg, workdir: str) -> CheckedRun:
  """`checked_config`, then `on_devices`."""
  return on_devices(checked_config(cfg, workdir), workdir)


def _check_sharding(cfg, mesh) -> None:
  """The weights' shapes divide over the mesh as `cfg.mesh.rules` shard them."""
  from flax import nnx

  from visage_jax.runtime import parallel
  from visage_jax.training import step as train_step

  try:
    rules = parallel.ShardingRules.from_config(cfg.mesh)
    abstract = nnx.eval_shape(lambda: train_step.init_model(cfg, seed=0))
    parallel.state_shardings(nnx.state(abstract), mesh, rules)
  except ValueError as e:  # parallel.ShardingError too
    raise TrainError(f"mesh: {e}") from None


def check_config(cfg) -> None:
  """`cfg.model` and `cfg.train`'s values, its weights' sources and its data; reads only config
  files."""
  from configs.visage import model_mistake

  mistake = model_mistake(cfg.model)
  if mistake:
    raise TrainError(mistake)
  _check_train_values(cfg)
  _check_weights_sources(cfg)
  _check_data(cfg)


def check_workdir(workdir: str) -> None:
  """A workdir's config.json, where it has one, reads (the trainer compares it with the run's)."""
  if os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
    try:
      read_config(workdir)
    except CheckpointError as e:
      raise TrainError(str(e)) from None


def train_mesh(cfg):
  """The run's (data, fsdp, tensor) mesh over every device (this imports JAX)."""
  from visage_jax.runtime import parallel

  m = cfg.mesh
  try:
    return parallel.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)
  except ValueError as e:
    raise TrainError(f"mesh: {e}") from None


def check_batch(cfg, mesh) -> None:
  """The batch divides over the mesh's data-parallel devices and the micro-batches."""
  t = cfg.train
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % (shards * t.grad_accum_steps):
    raise TrainError(
      f"train.batch_size={t.batch_size} does not divide over the mesh's data × fsdp = {shards} "
      f"devices × train.grad_accum_steps = {t.grad_accum_steps}"
    )


# The least value of each count in cfg.train (eval_every: -1 each epoch, 0 at the end only).
LEAST = {
  "batch_size": 1,
  "grad_accum_steps": 1,
  "num_steps": 0,
  "checkpoint_every": 1,
  "keep": 1,
  "best_k": 0,
  "log_every": 1,
  "eval_every": -1,
  "warmup_steps": 0,
  "cosine_steps": 0,
  "lr_decoder_stage1": 0.0,
  "lr_decoder_stage2": 0.0,
  "lr_lora": 0.0,
  "weight_decay": 0.0,
  "min_lr": 0.0,
}


# The config fields that fix the weights' shapes (model.*): a train.init or train.partner must
# have been made with the run's.
SHAPE_FIELDS = (
  "backbone.img_size",
  "backbone.patch_size",
  "backbone.tubelet_size",
  "backbone.num_frames",
  "backbone.embed_dim",
  "backbone.depth",
  "backbone.num_heads",
  "backbone.mlp_ratio",
  "backbone.taps",
  "neck_dim",
  "decoder_dim",
)


def _check_train_values(cfg) -> None:
  """`cfg.train`'s values on their own: expert, stage, counts, metrics, profile steps."""
  t = cfg.train
  if t.expert not in (1, 2) or t.stage not in (1, 2):
    raise TrainError(f"train.expert and train.stage are 1 or 2, got {t.expert} and {t.stage}")
  for key, least in LEAST.items():
    if t[key] < least:
      raise TrainError(f"train.{key}={t[key]} must be at least {least}")
  if t.val_metrics not in VAL_METRICS:
    raise TrainError(f"train.val_metrics={t.val_metrics!r}: one of {', '.join(VAL_METRICS)}")
  if t.profile_steps and (
    len(t.profile_steps) != 2 or not 1 <= t.profile_steps[0] <= t.profile_steps[1]
  ):
    raise TrainError(
      f"train.profile_steps={t.profile_steps}: give (first, last) with 1 ≤ first ≤ last"
    )
  if t.grad_accum_steps > 1 and cfg.loss.nss_weight:
    raise TrainError(
      "train.grad_accum_steps > 1 with loss.nss_weight: the NSS term averages over the frames "
      "with fixations, which micro-batches cannot weight as the whole batch does"
    )


def _check_weights_sources(cfg) -> None:
  """`train.init` and `train.partner`: checkpoints or workdirs of a model of this shape."""
  t = cfg.train
  if t.stage == 2 and not t.init:
    raise TrainError("stage 2 needs train.init: a stage-1 workdir or a visage-convert output")
  for key in ("init", "partner"):
    if not t[key]:
      continue
    if not os.path.isdir(t[key]):
      raise TrainError(f"train.{key}={t[key]}: no such checkpoint or workdir")
    if not os.path.isfile(os.path.join(t[key], CONFIG_FILE)):
      raise TrainError(
        f"train.{key}={t[key]}: neither a visage-convert output nor a training workdir"
      )
    _check_same_shapes(cfg, key)


def _check_same_shapes(cfg, key: str) -> None:
  """A one-line `TrainError` naming the fields where train.`key`'s model differs from the run's
  (its weights would not fit: a converted backbone's position embedding is made for its frames)."""
  source = cfg.train[key]
  try:
    theirs = read_config(source).model
  except CheckpointError as e:
    raise TrainError(f"train.{key}: {e}") from None

  def value(model, field):
    for part in field.split("."):
      model = model[part]
    return tuple(model) if isinstance(model, (list, tuple)) else model

  differ = [
    f"model.{f}={value(theirs, f)} there, {value(cfg.model, f)} here"
    for f in SHAPE_FIELDS
    if value(theirs, f) != value(cfg.model, f)
  ]
  if differ:
    raise TrainError(f"train.{key}={source} was made for another model: {'; '.join(differ)}")


def _check_data(cfg) -> None:
  """`data.dir`: prepared, at the model's size, with the splits named and a batch of videos."""
  from visage_jax.data.challenge import DataError
  from visage_jax.data.prepare import prepared_size, prepared_splits

  d, batch = cfg.data, cfg.train.batch_size
  try:
    splits, size = prepared_splits(d.dir), prepared_size(d.dir)
  except DataError as e:
    raise TrainError(f"data.dir: {e}") from None
  if size != cfg.model.backbone.img_size:
    raise TrainError(
      f"data.dir: {d.dir} was prepared at {size}×{size}, the model takes "
      f"{cfg.model.backbone.img_size}×{cfg.model.backbone.img_size} (visage-prepare --size)"
    )
  for key in ("train_split", "val_split"):
    if d[key] and d[key] not in splits:
      raise TrainError(f"data.{key}={d[key]!r}: {d.dir} has splits {list(splits)}")
  if splits.get(d.train_split, batch) < batch:
    raise TrainError(
      f"train.batch_size={batch}: the {d.train_split!r} split of {d.dir} has "
      f"{splits[d.train_split]} videos, fewer than one batch"
    )
