"""The training step: the two-stage LoRA recipe (docs/model.md §9) as one jitted program with
explicit shardings over a (data, fsdp, tensor) mesh.

This module holds the pieces that define the numbers: which weights train in which stage, the
optimiser groups and schedules, the EMA, and the step itself. The loop around it (data,
checkpoints, validation, logging) is `visage_jax.training.loop`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from configs.visage import expert_name
from visage_jax.data.video import normalize
from visage_jax.metrics.losses import expert2_aux_loss, vsp_loss
from visage_jax.models.internvideo2 import num_tokens, stored_widths
from visage_jax.models.layers import BatchNorm
from visage_jax.models.precision import high
from visage_jax.models.visage import ViSAGE
from visage_jax.runtime import parallel


def training_model_config(cfg):
  """config.model for training one expert in one stage: that expert only; LoRA only in stage 2."""
  if cfg.train.stage not in (1, 2):
    raise ValueError(f"train.stage must be 1 or 2, got {cfg.train.stage}")
  m = cfg.model.copy_and_resolve_references()
  m.experts = (expert_name(cfg),)
  m.lora.enabled = cfg.train.stage == 2
  m.lora_merged = False
  m.backbone.remat_policy = backbone_remat(cfg, m)
  return m


def backbone_remat(cfg, model_cfg) -> str:
  """The backbone's rematerialisation while training. Stage 1 never rematerialises: its backbone
  is not differentiated (a policy there only costs time: 15 % of a mid-size step on a CPU).
  Stage 2 takes `train.remat_policy` ("" for the model's own). "auto" keeps as much as fits: on a
  CPU "none" when the blocks' stored activations for this process's batch take under a quarter of
  the host's memory, else "full"; on an accelerator the first of `REMAT_BY_MEMORY` (least
  recomputation first) whose activations for one device's micro-batch take under half of the
  device's memory, else "full"."""
  if cfg.train.stage == 1:
    return "none"
  policy = cfg.train.get("remat_policy", "")  # absent from workdirs of older versions
  if policy != "auto":
    return policy or model_cfg.backbone.remat_policy
  if jax.default_backend() == "cpu":
    clips = -(-cfg.train.batch_size // jax.process_count())
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
    return "none" if clips * stored_activation_bytes(model_cfg, "none") < budget else "full"
  budget = device_memory_bytes() / 2
  micro_batch = cfg.train.batch_size // max(int(cfg.train.get("grad_accum_steps", 1)), 1)
  clips = -(-micro_batch // jax.device_count())
  for candidate in REMAT_BY_MEMORY:
    if clips * stored_activation_bytes(model_cfg, candidate) < budget:
      return candidate
  return "full"


# Stage 2's "auto" on an accelerator tries these in turn: least recomputation first.
REMAT_BY_MEMORY = ("none", "save_matmuls", "save_qkv_attention", "save_attention")


def device_memory_bytes() -> int:
  """The memory of one local accelerator as its allocator reports it (0 where it reports none)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats.get("bytes_limit", 0))


def stored_activation_bytes(model_cfg, policy: str) -> int:
  """A rough size of what the blocks keep for the backward pass of one clip under a remat
  `policy` (`internvideo2.stored_widths` numbers per token and block, every expert; attention
  scores are never stored: cuDNN's kernel and `per_head` recompute them). In float32 on a CPU,
  whose backend computes bf16 in float32; in the model's dtype elsewhere."""
  b = model_cfg.backbone
  hidden = int(b.embed_dim * b.mlp_ratio)
  per_token = stored_widths(policy, b.embed_dim, hidden)
  blocks = max(b.taps) + 1
  itemsize = 4 if jax.default_backend() == "cpu" else jnp.dtype(model_cfg.dtype).itemsize
  experts = max(len(model_cfg.experts), 1)
  return itemsize * num_tokens(b) * per_token * blocks * experts


def trainable_filter(cfg):
  """Stage 1: the expert's neck, decoder and FiLM. Stage 2: those and the backbone's LoRA."""
  decoder = nnx.All(nnx.Param, nnx.PathContains(expert_name(cfg)))
  if cfg.train.stage == 1:
    return decoder
  return nnx.Any(decoder, nnx.LoRAParam)


def set_batchnorm_mode(model, train: bool) -> None:
  """Stage 1 trains BatchNorm (batch statistics, running averages updated); stage 2 freezes it."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, BatchNorm):
      module.use_running_average = not train


def split(model, cfg):
  """(graphdef, trainable, batch_stats, frozen)."""
  set_batchnorm_mode(model, train=cfg.train.stage == 1)
  return nnx.split(model, trainable_filter(cfg), nnx.BatchStat, ...)


def eval_graphdef(graphdef, cfg, trainable, batch_stats, frozen):
  """The same model with BatchNorm in evaluation mode, for validation on the training states."""
  model = nnx.merge(graphdef, trainable, batch_stats, frozen)
  set_batchnorm_mode(model, train=False)
  return nnx.split(model, trainable_filter(cfg), nnx.BatchStat, ...)[0]


def _schedule(base: float, cfg):
  t = cfg.train
  parts, bounds = [], []
  if t.warmup_steps:
    parts.append(optax.linear_schedule(0.01 * base, base, t.warmup_steps))
    bounds.append(t.warmup_steps)
  if t.cosine_steps:
    parts.append(optax.cosine_decay_schedule(base, t.cosine_steps, alpha=t.min_lr / base))
  else:
    parts.append(optax.constant_schedule(base))
  return optax.join_schedules(parts, bounds) if bounds else parts[0]


def param_labels(params):
  def label(path, _):
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return "lora" if any(k in ("lora_a", "lora_b") for k in keys) else "decoder"

  return jax.tree_util.tree_map_with_path(label, params)


def schedules(cfg) -> dict:
  """{"lora": schedule, "decoder": schedule}: each group's learning rate as a function of step."""
  t = cfg.train
  dec_lr = t.lr_decoder_stage1 if t.stage == 1 else t.lr_decoder_stage2
  return {"lora": _schedule(t.lr_lora, cfg), "decoder": _schedule(dec_lr, cfg)}


def make_optimizer(cfg):
  """AdamW groups as the original: LoRA at lr_lora, the rest at the stage's decoder rate."""
  t = cfg.train

  def adamw(schedule):
    return optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay)

  groups = {k: adamw(v) for k, v in schedules(cfg).items()}
  return optax.multi_transform(groups, param_labels)


def ema_decay(cfg) -> float:
  """`train.ema_decay`, where -1 means the original's recipe: 0.99 for Expert 2 in stage 2 (the
  only run that kept an EMA), none otherwise. 0 turns it off."""
  d = float(cfg.train.ema_decay)
  if d < 0:
    return 0.99 if (cfg.train.expert == 2 and cfg.train.stage == 2) else 0.0
  if d >= 1:
    raise ValueError(f"train.ema_decay must be below 1, got {d}")
  return d


def make_loss_fn(graphdef, cfg):
  """loss_fn(trainable, batch_stats, frozen, batch, rng) → (loss, (parts, new batch_stats)) for
  `cfg.train`'s expert and stage; batch holds "clip" (normalised frames), saliency, fixations and
  mask."""
  name = expert_name(cfg)
  stage2 = cfg.train.stage == 2
  with_aux = name == "expert2" and cfg.train.aux_loss and (not stage2 or cfg.train.aux_loss_stage2)
  # LoRA dropout (stage 2) and stochastic depth (both stages) draw from the step's key
  stochastic = stage2 or cfg.model.backbone.drop_path_rate > 0

  def loss_fn(trainable, batch_stats, frozen, batch, rng):
    # every state an argument, so that BatchNorm's running statistics are updated at the trace
    # level where the model is rebuilt
    model = nnx.merge(graphdef, trainable, batch_stats, frozen, copy=True)
    out = model(batch["clip"], with_aux=with_aux, rng=rng if stochastic else None)
    loss, parts = vsp_loss(
      out[name], batch["saliency"], batch["fixations"], cfg=cfg.loss, frame_mask=batch["mask"]
    )
    if with_aux:
      aux = {k: out[f"expert2_aux_{k}"] for k in ("p23", "p17", "p11")}
      aux_loss, aux_parts = expert2_aux_loss(
        aux, batch["saliency"], cfg=cfg.loss, frame_mask=batch["mask"]
      )
      loss = loss + aux_loss
      parts.update(aux_parts)
    parts["total"] = loss
    return loss, (parts, nnx.state(model, nnx.BatchStat))

  return loss_fn


def micro_batches(batch: dict, accum: int, shards: int) -> dict:
  """(B, ...) → (accum, B / accum, ...): micro-batch i takes the i-th part of every shard's rows
  (the batch is split over `shards` devices in blocks), so each stays split over all of them."""

  def split(x):
    per_shard = x.shape[0] // shards
    x = jnp.swapaxes(x.reshape(shards, accum, per_shard // accum, *x.shape[1:]), 0, 1)
    return x.reshape(accum, x.shape[1] * x.shape[2], *x.shape[3:])

  return jax.tree.map(split, batch)


def accumulated_grads(grad_fn, trainable, batch_stats, frozen, batch, rng, accum, shards):
  """The gradient and loss parts of the whole batch from `accum` micro-batches in a `lax.scan`.
  The loss is a mean over the batch's valid frames, so each micro-batch counts by its share of
  them: the sum equals the whole batch's loss and gradient. BatchNorm in training mode (stage 1
  of Expert 1) normalises each micro-batch by its own statistics and updates its running
  statistics once per micro-batch; random draws (LoRA dropout, drop path) are the micro-batch's
  own (key folded with its index)."""
  # An integer count: each share comes out in the default float (float64 under x64), not
  # rounded to float32, which would put a ~1e-8 error on every micro-batch's weight.
  frames = jnp.maximum(jnp.sum(batch["mask"]), 1)

  def body(carry, xs):
    grads, parts, stats = carry
    index, micro = xs
    share = jnp.sum(micro["mask"]) / frames
    (_, (p, stats)), g = grad_fn(trainable, stats, frozen, micro, jax.random.fold_in(rng, index))
    grads = jax.tree.map(lambda a, b: a + share * b, grads, g)
    parts = jax.tree.map(lambda a, b: a + share * b, parts, p)
    return (grads, parts, stats), None

  micro = micro_batches(batch, accum, shards)
  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(grad_fn, trainable, batch_stats, frozen, first, rng)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (shapes[1], shapes[0][1][0]))
  init = (*zeros, batch_stats)
  (grads, parts, stats), _ = jax.lax.scan(body, init, (jnp.arange(accum), micro))
  return grads, parts, stats


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a training step changes, as one pytree with one sharding tree (`jit_step`);
  Orbax saves and restores it as it is. `ema` is None without an EMA (see `ema_decay`);
  otherwise a copy of the trainable weights moved by (1 − decay) towards them after each
  update, as the original's ModelEMA does (no bias correction). `step` counts the steps taken,
  skipped non-finite ones included."""

  trainable: Any
  batch_stats: Any
  opt: Any
  ema: Any
  step: Any

  def scored(self):
    """The weights validation scores and exports keep: the EMA's if there is one."""
    return self.ema if self.ema is not None else self.trainable


def new_state(cfg, tx, trainable, batch_stats) -> TrainState:
  """The state before the first step: the optimiser's initial state, the EMA (a copy of the
  trainable weights, or None without one) and step 0. Works on abstract values too."""
  ema = jax.tree.map(jnp.copy, trainable) if ema_decay(cfg) > 0 else None
  return TrainState(trainable, batch_stats, tx.init(trainable), ema, jnp.zeros((), jnp.int32))


def _updated(state: TrainState, grads, new_stats, tx, decay: float) -> TrainState:
  updates, opt = tx.update(grads, state.opt, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  ema = state.ema
  if ema is not None:
    ema = jax.tree.map(lambda e, w: e + (1.0 - decay) * (w - e), ema, trainable)
  return TrainState(trainable, new_stats, opt, ema, state.step)


def make_step(graphdef, cfg, tx, *, return_grads: bool = False, batch_shards: int = 1):
  """step(state, frozen, batch, rng) → (state, metrics). batch: frames uint8 (B, T, S, S, 3),
  saliency and fixations float32 (B, T, S, S), mask (B, T); rng: this step's key (or its raw
  uint32 data). metrics: the loss parts, "grad_norm", and "finite", false when the loss or a
  gradient is not finite: then only the step count moves. With `train.grad_accum_steps` > 1 the
  gradient comes from that many micro-batches (`accumulated_grads`; `batch_shards`: the devices
  the batch is split over)."""
  decay = ema_decay(cfg)
  accum = int(cfg.train.grad_accum_steps)
  grad_fn = jax.value_and_grad(make_loss_fn(graphdef, cfg), has_aux=True)

  def step(state: TrainState, frozen, batch, rng):
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):  # raw uint32 key data
      rng = jax.random.wrap_key_data(rng)
    batch = {**batch, "clip": normalize(batch["frames"], xp=jnp, dtype=high())}
    del batch["frames"]
    if accum > 1:
      args = (state.trainable, state.batch_stats, frozen, batch, rng, accum, batch_shards)
      grads, parts, new_stats = accumulated_grads(grad_fn, *args)
    else:
      (_, (parts, new_stats)), grads = grad_fn(
        state.trainable, state.batch_stats, frozen, batch, rng
      )
    parts["grad_norm"] = optax.tree.norm(grads)
    parts["finite"] = jnp.isfinite(parts["total"]) & jnp.isfinite(parts["grad_norm"])
    new = _updated(state, grads, new_stats, tx, decay)
    # A non-finite loss or gradient changes nothing but the count (the trainer stops or skips)
    kept = jax.tree.map(lambda n, o: jnp.where(parts["finite"], n, o), new, state)
    if return_grads:
      parts["grads"] = grads
    return dataclasses.replace(kept, step=state.step + 1), parts

  return step


def jit_step(graphdef, cfg, tx, mesh, state: TrainState, frozen, *, return_grads=False):
  """(`make_step`'s step as one `jax.jit` on `mesh`, the shardings of (state, frozen)); put the
  state on them with `parallel.put`. The arguments may be abstract (shapes only): parameters
  follow `cfg.mesh.rules` (`parallel.ShardingRules`), the optimiser state and the EMA as the
  weights they follow, the batch is split over (data, fsdp). The state is donated."""
  rules = parallel.ShardingRules.from_config(cfg.mesh)
  shardings = parallel.state_shardings((state, frozen), mesh, rules)
  repl = parallel.replicated(mesh)
  shards = parallel.batch_size_multiple(mesh)
  step = make_step(graphdef, cfg, tx, return_grads=return_grads, batch_shards=shards)
  fn = parallel.jit_on_mesh(
    step,
    mesh,
    in_shardings=(*shardings, parallel.batch_sharding(mesh), repl),
    out_shardings=(shardings[0], repl),
    donate_argnums=(0,),
  )
  return fn, shardings


def init_model(cfg, seed: int = 0):
  """A fresh training model (random weights) for `cfg.train`'s expert and stage."""
  return ViSAGE(training_model_config(cfg), rngs=nnx.Rngs(seed))
