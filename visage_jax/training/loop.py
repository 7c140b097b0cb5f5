"""The training loop around `visage_jax.training.step`: data, checkpoints, validation, logging.

A workdir holds:

    config.json          the resolved config of the run (paths made absolute)
    checkpoints/<step>/  the latest `train.keep` states for resuming (Orbax, asynchronous):
                         `state`, the `train_step.TrainState` tree as it is (trainable weights,
                         BatchNorm statistics, optimiser state, EMA, step count); `data`, the
                         input iterator; `params`, the weights validation scores, by name
    best/<step>/         the best `train.best_k` `params` by validation CC
    validation.jsonl     one JSON object per validation
    tb/                  TensorBoard event files (loss parts, rates, MFU, goodput)
    profile/             with `train.profile_steps`: a jax.profiler trace of those steps
    init_backbone/       only when `train.init` is empty: the random backbone the run started
                         from, so that later stages and exports start from the same weights
    trainable_last.npz   the trainable weights at the end

The step's randomness is `fold_in(seed, step)` and the iterator is checkpointed, so a resumed run
continues exactly where the last checkpoint left it. SIGTERM makes the loop save and exit.

Validation (`data.val_split`, `visage_jax/evaluation/validation.py`): the original's 4 evenly
spaced windows per video, challenge-variant metrics at model size, per video then over videos. With
`train.partner` (the other expert, fixed) the record's metrics are the fused map's, as the
challenge scores it; the trained expert's own are under its name. The weights validated (and kept
as best) are the EMA's when there is one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from visage_jax import checkpoint as ckpt
from visage_jax.runtime import parallel
from visage_jax.runtime.files import written_whole
from visage_jax.runtime.trees import named, to_host
from visage_jax.training import step as train_step
from visage_jax.training.checks import CheckedRun, TrainError
from visage_jax.training.reporting import Goodput, Reporter
from visage_jax.training.step import TrainState
from visage_jax.training.weights import (
  BEST_DIR,
  INIT_DIR,
  STATE_DIR,
  best_options,
  load_init,
  partner_model,
)

# ----------------------------------------------------------------------------- the loop


def _workdir_change(workdir: str, cfg) -> str | None:
  """What in `cfg` differs from the config `workdir` was started with, in what a workdir keeps:
  the model and loss, stage, expert, batch, seed, init, and the metrics that rank its best
  checkpoints (the rest, more steps or another validation interval, may change between runs).
  None when nothing does or the workdir is new."""
  path = os.path.join(workdir, ckpt.CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  old = ckpt.read_config(workdir)
  for key in ("model", "loss"):
    if old[key].to_json(sort_keys=True) != cfg[key].to_json(sort_keys=True):
      return f"another config.{key}"
  defaults = {"val_metrics": "challenge"}  # for workdirs started before the key existed
  for key in ("stage", "expert", "batch_size", "seed", "init", "val_metrics"):
    was = old.train.get(key, defaults.get(key))
    if was != cfg.train[key]:
      return f"train.{key}={was!r}, not {cfg.train[key]!r}"
  return None


def _saved_a_step(workdir: str) -> bool:
  """Whether `workdir` holds a finished checkpoint, latest or best (Orbax names a finished one by
  its step alone; one still being written carries a suffix)."""
  for sub in (STATE_DIR, BEST_DIR):
    folder = os.path.join(workdir, sub)
    if os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder)):
      return True
  return False


def _start_or_restart(workdir: str, cfg, say) -> None:
  """A workdir that has saved a checkpoint keeps its config (`_workdir_change`). One that has
  saved none (its run failed in setup or its first steps, out of memory, say) starts again with
  the new config: the config is replaced and a random backbone saved there is made anew."""
  change = _workdir_change(workdir, cfg)
  if change is None:
    return
  if _saved_a_step(workdir):
    raise TrainError(f"{workdir}: was started with {change}; use a new --workdir")
  say(f"{workdir}: was started with {change}, but saved no checkpoint: it starts again")
  if jax.process_index() == 0:  # replaced, never removed: the other processes may be reading it
    shutil.rmtree(os.path.join(workdir, INIT_DIR), ignore_errors=True)
    ckpt.write_config(workdir, cfg)


def _write_init_backbone(path: str, cfg, model, log) -> None:
  """With no `train.init`, save the random backbone the run starts from (see module doc)."""
  if jax.process_index() == 0 and not os.path.isdir(path):
    bcfg = cfg.copy_and_resolve_references()
    bcfg.model.experts = ()
    bcfg.model.lora.enabled = False
    flat = {
      tuple(p): to_host(v.get_value())
      for p, v in nnx.to_flat_state(nnx.state(model))
      if p[0] == "backbone" and p[-1] not in ("lora_a", "lora_b")
    }
    ckpt.save_flat(path, bcfg, flat)
    log(f"no train.init: the random backbone is saved in {path}")


class Profile:
  """`train.profile_steps` = (first, last): a `jax.profiler` trace of those steps in
  WORKDIR/profile (TensorBoard's profile plugin and Perfetto read it); () traces nothing."""

  def __init__(self, steps, directory: str):
    self.first, self.last = tuple(steps) if steps else (0, 0)
    self.directory, self.active = directory, False

  def before(self, step: int) -> None:
    if step == self.first:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int) -> None:
    if self.active and step == self.last:
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def skip_or_stop(step: int, parts: dict, t, report) -> None:
  """A step whose loss or gradient was not finite changed nothing (`train_step.make_step`):
  with `train.skip_nonfinite` it is counted and the run goes on; otherwise the run stops with one
  line naming the step and the parts, its latest checkpoint the last good one."""
  if t.skip_nonfinite:
    report.skipped += 1
    return
  values = {k: float(to_host(v)) for k, v in parts.items() if k != "finite"}
  bad = ", ".join(f"{k} {v}" for k, v in values.items() if not np.isfinite(v))
  raise TrainError(
    f"step {step}: non-finite {bad}; stopped, the latest checkpoint is the last good one "
    "(train.skip_nonfinite=True skips such steps)"
  )


def _eval_due(t, step: int, steps_per_epoch: int) -> bool:
  if step == t.num_steps:
    return True
  if t.eval_every > 0:
    return step % t.eval_every == 0
  if t.eval_every < 0:
    return step % steps_per_epoch == 0
  return False


def _scored_params(state: TrainState) -> dict:
  """The weights validation scored, with the BatchNorm statistics, nested by parameter name: the
  `params` item of a checkpoint, what exports and partners read."""
  return ckpt.nested_from_flat({**named(state.scored()), **named(state.batch_stats)})


class RunCheckpoints:
  """WORKDIR/checkpoints (the latest `train.keep` states with the input iterator, saved
  asynchronously) and WORKDIR/best (the best `train.best_k` weights by validation CC)."""

  def __init__(self, workdir: str, t):
    import grain.python as grain

    self.grain = grain
    options = ocp.CheckpointManagerOptions(max_to_keep=t.keep, enable_async_checkpointing=True)
    handlers = {
      "state": ocp.StandardCheckpointHandler(),
      "params": ocp.StandardCheckpointHandler(),
      "data": grain.PyGrainCheckpointHandler(),
    }  # named up front, so that a saved state's metadata can be read before restoring it
    self.latest = ocp.CheckpointManager(
      os.path.join(workdir, STATE_DIR), item_handlers=handlers, options=options
    )
    self.best = ocp.CheckpointManager(
      os.path.join(workdir, BEST_DIR), item_names=("params",), options=best_options(t.best_k)
    )

  def resume(self, state: TrainState, it) -> TrainState:
    """The latest saved state (`state` if none), the iterator moved to where it was."""
    step = self.latest.latest_step()
    if step is None:
      return state
    self._check_layout(step)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    args = ocp.args.Composite(
      state=ocp.args.StandardRestore(target), data=self.grain.PyGrainCheckpointRestore(it)
    )
    return self.latest.restore(step, args=args).state

  def _check_layout(self, step: int) -> None:
    """Checkpoints of versions before the one-tree `TrainState` (no `step` in the state) are
    refused in one line rather than by Orbax's traceback."""
    saved = self.latest.item_metadata(step).state
    if saved is None or "step" not in saved:
      raise TrainError(
        f"{self.latest.directory}/{step}: written by an older visage-jax with another state "
        "layout; resume it with that version, or start a new --workdir from it with train.init"
      )

  def save(self, step: int, state: TrainState, it) -> None:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      params=ocp.args.StandardSave(_scored_params(state)),
      data=self.grain.PyGrainCheckpointSave(it),
    )
    self.latest.save(step, args=args, force=True)

  def save_best(self, step: int, state: TrainState, cc: float) -> None:
    if step in self.best.all_steps():
      return
    args = ocp.args.Composite(params=ocp.args.StandardSave(_scored_params(state)))
    self.best.save(step, args=args, metrics={"cc": cc})
    self.best.wait_until_finished()  # before the state at this step can be saved

  def close(self) -> None:
    for manager in (self.latest, self.best):
      manager.wait_until_finished()
      manager.close()


def _set_up(cfg, workdir: str, mesh, say):
  """The model from its init (or a random backbone, saved), the config recorded, the jitted
  step: (graphdef, frozen, step_fn, the initial TrainState)."""
  t = cfg.train
  os.makedirs(workdir, exist_ok=True)
  random_backbone = not t.init  # recorded as WORKDIR/init_backbone (written below)
  if random_backbone:
    if jax.process_count() > 1:
      raise TrainError("a multi-process run needs train.init (a visage-convert output or workdir)")
    cfg.train.init = os.path.join(workdir, INIT_DIR)
  _start_or_restart(workdir, cfg, say)  # before any weights are read
  model = train_step.init_model(cfg, seed=t.seed)
  if random_backbone:
    _write_init_backbone(cfg.train.init, cfg, model, say)
  else:
    say(f"init from {t.init}: {load_init(model, t.init, train_step.expert_name(cfg))}")
  if jax.process_index() == 0 and not os.path.isfile(os.path.join(workdir, ckpt.CONFIG_FILE)):
    ckpt.write_config(workdir, cfg)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  step_fn, shardings = train_step.jit_step(graphdef, cfg, tx, mesh, state, frozen)
  state, frozen = parallel.put((state, frozen), shardings)
  return graphdef, frozen, step_fn, state


def _input(cfg):
  """(the training batches' iterator, steps per epoch)."""
  from visage_jax.data.pipeline import make_loader
  from visage_jax.data.prepare import data_source

  t = cfg.train
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
  return iter(loader), max(len(source) // t.batch_size, 1)


def _validator(cfg, workdir: str, graphdef, state: TrainState, frozen, mesh, say):
  """`validation.make_validator` for `data.val_split` on the training mesh (a partner's maps kept
  in an unnamed file in the workdir), or None without one."""
  from visage_jax.evaluation.validation import make_validator

  if not cfg.data.val_split:
    if cfg.train.partner:
      raise TrainError("train.partner is only used by validation; set data.val_split too")
    return None
  t = cfg.train
  partner = partner_model(cfg, t.partner) if t.partner else None
  graphdef_eval = train_step.eval_graphdef(
    graphdef, cfg, state.trainable, state.batch_stats, frozen
  )
  data = cfg.data
  try:
    return make_validator(
      graphdef_eval,
      cfg,
      data.dir,
      data.val_split,
      partner=partner,
      mesh=mesh,
      scratch=workdir,
      log=say,
    )
  except parallel.ShardingError as e:  # the partner's weights, laid out by mesh.rules
    raise TrainError(f"train.partner: mesh: {e}") from None


class ValidationLog:
  """WORKDIR/validation.jsonl, one JSON object per validation; a resumed run first drops the
  records of the steps it will redo. Written by process 0 only."""

  def __init__(self, workdir: str, start: int, lead: bool):
    self.path, self.lead = os.path.join(workdir, "validation.jsonl"), lead
    if lead and os.path.isfile(self.path):
      with open(self.path) as f:
        kept = [x for x in f if x.strip() and json.loads(x)["step"] <= start]
      with written_whole(self.path) as f:  # a kill meanwhile keeps the old log
        f.writelines(kept)

  def add(self, record: dict) -> None:
    if self.lead:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _above_the_bar(log):
  """`log`, written above the progress bar rather than through it."""
  from tqdm import tqdm

  def say(msg):
    with tqdm.external_write_mode(file=sys.stdout):
      log(msg)

  return say


def _next_batch(it, mesh) -> dict:
  from visage_jax.data.pipeline import global_batch

  keys = ("frames", "saliency", "fixations", "mask")
  return global_batch(mesh, {k: v for k, v in next(it).items() if k in keys})


def _validate(step, validate, state: TrainState, frozen, val_log, report, checkpoints) -> None:
  """Score the weights, record the scores, keep them in best/ if they rank."""
  scores = validate(state.scored(), state.batch_stats, frozen)
  val_log.add({"step": int(step), **scores})
  report.validation(step, scores)
  checkpoints.save_best(step, state, float(scores["cc"]))


def _final_weights(workdir: str, state: TrainState) -> None:
  final = {"/".join(k): to_host(v) for k, v in named(state.trainable).items()}
  with written_whole(os.path.join(workdir, "trainable_last.npz"), "wb") as f:
    np.savez(f, **final)


def run(checked: CheckedRun, *, log=print) -> dict:
  """Train `cfg.train.num_steps` steps into the workdir, resuming from its latest checkpoint; the
  config, workdir and mesh as `checks.check_run` checked them."""
  say, goodput = _above_the_bar(log), Goodput()
  cfg, workdir, mesh = checked.cfg, checked.workdir, checked.mesh
  t, lead = cfg.train, jax.process_index() == 0
  graphdef, frozen, step_fn, state = _set_up(cfg, workdir, mesh, say)
  it, steps_per_epoch = _input(cfg)
  validate = _validator(cfg, workdir, graphdef, state, frozen, mesh, say)
  checkpoints = RunCheckpoints(workdir, t)
  state = checkpoints.resume(state, it)
  start = int(to_host(state.step))
  if start:
    say(f"resumed from step {start}")
  val_log = ValidationLog(workdir, start, lead)
  report = Reporter(cfg, workdir=workdir, start=start, lead=lead, say=say, goodput=goodput)
  profile = Profile(t.profile_steps, os.path.join(workdir, "profile"))
  stop = {"now": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
  rng, repl = jax.random.key(t.seed), parallel.replicated(mesh)
  parts, step = {}, start
  goodput.seconds["setup"] = time.perf_counter() - goodput.start
  try:
    for step in range(start + 1, t.num_steps + 1):
      with goodput.timing("data"):
        batch = _next_batch(it, mesh)
      key = parallel.put(jax.random.key_data(jax.random.fold_in(rng, step)), repl)
      profile.before(step)
      with goodput.timing("compile" if step == start + 1 else "step"):
        state, parts = step_fn(state, frozen, batch, key)
        finite = bool(to_host(parts["finite"]))  # waits for the step
      profile.after(step)
      if not finite:
        skip_or_stop(step, parts, t, report)
      report.step(step, parts)
      if stop["now"]:
        with goodput.timing("checkpoint"):
          checkpoints.save(step, state, it)
        say(f"SIGTERM: saved step {step}")
        break
      if validate and _eval_due(t, step, steps_per_epoch):
        with goodput.timing("validation"):
          _validate(step, validate, state, frozen, val_log, report, checkpoints)
      if step % t.checkpoint_every == 0 or step == t.num_steps:
        with goodput.timing("checkpoint"):
          checkpoints.save(step, state, it)
  finally:
    profile.close()
    checkpoints.close()
    report.close()
    signal.signal(signal.SIGTERM, previous)
  if lead and not stop["now"]:
    _final_weights(workdir, state)
  return {
    "step": step,
    "loss": float(to_host(parts["total"])) if parts else None,
    "best_step": checkpoints.best.best_step() if validate else None,
  }
