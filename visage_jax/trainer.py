"""The training loop around `visage_jax.train`'s step: data, checkpoints and resumption.

Checkpoints (Orbax CheckpointManager, asynchronous) hold the trainable weights, BatchNorm
statistics, optimiser state, the step and the input iterator's state; the step's randomness is
`fold_in(seed, step)`, so a resumed run continues exactly where the last checkpoint left it.
SIGTERM makes the loop save at the current step and exit.

Validation (`data.val_split`): the original's 4 evenly spaced windows per video, metrics of the
expert's map at model size (challenge variant, per video then over videos), one JSON line per
evaluation appended to WORKDIR/validation.jsonl.

Still to come with the training issue: best-k by validation CC, EMA, TensorBoard, MFU.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from visage_jax import parallel, train


def load_init(model, directory: str, expert: str) -> list[str]:
  """Copy the weights a converted checkpoint has for this model: the backbone's base weights and,
  if present, this expert's neck/decoder and (stage 2) its LoRA. Returns what was loaded."""
  from visage_jax import checkpoint as ckpt

  src_cfg, src = ckpt.load_model(directory)
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


def make_validator(graphdef_eval, cfg, prepared: str, split: str):
  """A function (trainable, stats, frozen) → {"cc", "sim", "nss", "auc_judd", "kld", "frames"}."""
  import jax.numpy as jnp

  from visage_jax import evaluate
  from visage_jax.data.prepare import data_source
  from visage_jax.data.windows import validation_windows

  source, _ = data_source(prepared, split)
  t_frames = cfg.model.backbone.num_frames
  name = train.expert_name(cfg)
  clips = []
  for i in range(len(source)):
    ex = source[i]
    n, size = ex["frames"].shape[:2]
    fix = ex["fixations_model"]
    counts = np.zeros((n, size, size), np.int32)
    np.add.at(counts, (fix[:, 0], fix[:, 1], fix[:, 2]), 1)
    for idx, mask in validation_windows(n, t_frames):
      clips.append((ex["name"].decode(), ex["frames"][idx], ex["saliency"][idx], counts[idx], mask))

  @jax.jit
  def frame_scores(trainable, stats, frozen, frames, sal, counts, mask):
    model = nnx.merge(graphdef_eval, trainable, stats, frozen, copy=True)
    out = model(train.normalize_on_device(frames))[name]
    m = evaluate.frame_metrics(out, sal.astype(jnp.float32), counts, quantize_uint8=False)
    return jax.tree.map(lambda v: jnp.where(mask, v, jnp.nan), m["ntire2026"])

  def validate(trainable, stats, frozen):
    agg = evaluate.Aggregator()
    for video, frames, sal, counts, mask in clips:
      scores = frame_scores(
        trainable, stats, frozen, frames[None], sal[None], counts[None], mask[None]
      )
      agg.add(video, {"map": {"ntire2026": jax.tree.map(lambda x: x[0], scores)}}, mask)
    overall = agg.report()["overall"]["map"]["ntire2026"]
    out = {k: v["challenge"] for k, v in overall.items()}
    out["frames"] = overall["cc"]["frames"]
    out["videos"] = len(agg.videos())
    return out

  return validate


def _save_tree(tree):
  leaves = jax.tree.leaves(tree)
  return {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}


def run(cfg, workdir: str, *, log=print) -> dict:
  """Train `cfg.train.num_steps` steps into `workdir`, resuming from its latest checkpoint."""
  from visage_jax.data.pipeline import global_batch, make_loader
  from visage_jax.data.prepare import data_source

  os.makedirs(workdir, exist_ok=True)
  t = cfg.train
  mesh = parallel.make_mesh(**cfg.mesh)
  model = train.init_model(cfg, seed=t.seed)
  if t.init:
    log(f"init from {t.init}: {load_init(model, t.init, train.expert_name(cfg))}")
  graphdef, trainable, stats, frozen = train.split(model, cfg)
  tx = train.make_optimizer(cfg)
  opt_state = tx.init(trainable)
  step_fn, (trainable, stats, frozen, opt_state) = train.jit_train_step(
    graphdef, cfg, tx, mesh, trainable, stats, frozen, opt_state
  )
  source, _ = data_source(cfg.data.dir, cfg.data.train_split)
  loader = make_loader(
    source,
    num_frames=cfg.model.backbone.num_frames,
    global_batch=t.batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    seed=t.seed,
    worker_count=cfg.data.workers,
  )
  it = iter(loader)
  import json

  import grain.python as grain

  validate = None
  if cfg.data.val_split:
    graphdef_eval = train.eval_graphdef(graphdef, cfg, trainable, stats, frozen)
    validate = make_validator(graphdef_eval, cfg, cfg.data.dir, cfg.data.val_split)

  def run_validation(step):
    scores = validate(trainable, stats, frozen)
    record = {"step": int(step), **scores}
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "validation.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    log(f"validation at step {step}: cc {scores['cc']:.4f}, nss {scores['nss']:.4f}")
    return record

  mngr = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    item_names=("state", "data"),
    options=ocp.CheckpointManagerOptions(max_to_keep=t.keep, enable_async_checkpointing=True),
  )
  state_tree = (trainable, stats, opt_state)
  treedef = jax.tree.structure(state_tree)
  start = 0
  latest = mngr.latest_step()
  if latest is not None:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _save_tree(state_tree))
    restored = mngr.restore(
      latest,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=grain.PyGrainCheckpointRestore(it)
      ),
    )
    leaves = [restored.state[k] for k in sorted(restored.state)]
    trainable, stats, opt_state = jax.tree.unflatten(treedef, leaves)
    start = latest
    log(f"resumed from step {latest}")

  stop = {"now": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

  def save(step):
    mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_save_tree((trainable, stats, opt_state))),
        data=grain.PyGrainCheckpointSave(it),
      ),
      force=True,
    )

  rng = jax.random.key(t.seed)
  keys = ("frames", "saliency", "fixations", "mask")
  t0 = time.time()
  parts = {}
  step = start
  try:
    for step in range(start + 1, t.num_steps + 1):
      local = next(it)
      batch = global_batch(mesh, {k: local[k] for k in keys})
      trainable, stats, opt_state, parts = step_fn(
        trainable, stats, frozen, opt_state, batch, jax.random.fold_in(rng, step)
      )
      if step % t.log_every == 0 or step == t.num_steps:
        rate = (step - start) / (time.time() - t0)
        log(f"step {step}: loss {float(parts['total']):.4f}, {rate:.2f} steps/s")
      if stop["now"]:
        save(step)
        log(f"SIGTERM: saved step {step}")
        break
      if validate and ((t.eval_every and step % t.eval_every == 0) or step == t.num_steps):
        run_validation(step)
      if step % t.checkpoint_every == 0 or step == t.num_steps:
        save(step)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    signal.signal(signal.SIGTERM, previous)
  final = {
    f"{i:05d}": np.asarray(jax.device_get(x)) for i, x in enumerate(jax.tree.leaves(trainable))
  }
  np.savez(os.path.join(workdir, "trainable_last.npz"), **final)
  return {"step": step, "loss": float(parts["total"]) if parts else None}
