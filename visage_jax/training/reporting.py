"""What a training run shows and records: the progress bar, the log lines and TensorBoard (loss
parts, learning rates, step time, MFU), and where the wall time went (`Goodput`)."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax

from visage_jax.evaluation.evaluate import METRICS, counted
from visage_jax.runtime.trees import to_host
from visage_jax.training import flops as perf
from visage_jax.training import step as train_step

# What `Goodput` tells apart; "step" is the training step itself (dispatch and device work: the
# loop waits for each step's finiteness flag), "compile" the first step, which includes it.
GOODPUT = ("step", "compile", "data", "checkpoint", "validation", "setup")


class Goodput:
  """Wall time per activity since the run started; what none of them took is "other"."""

  def __init__(self):
    self.start = time.perf_counter()
    self.seconds = dict.fromkeys(GOODPUT, 0.0)

  @contextlib.contextmanager
  def timing(self, what: str):
    begin = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[what] += time.perf_counter() - begin

  def split(self) -> dict:
    """{activity: fraction of the wall time so far}, with "other", and "total_s"."""
    total = max(time.perf_counter() - self.start, 1e-9)
    out = {k: v / total for k, v in self.seconds.items()}
    out["other"] = max(0.0, 1.0 - sum(out.values()))
    return {**out, "total_s": total}

  def line(self) -> str:
    split = self.split()
    parts = [f"{k} {split[k]:.1%}" for k in (*GOODPUT, "other") if split[k] >= 0.0005]
    return f"time ({split['total_s']:.1f} s): " + ", ".join(parts)


def summary_writer(logdir: str, purge_step: int | None):
  """tensorboardX's SummaryWriter, imported without PyTorch: where torch is installed (the
  `convert` extra), tensorboardX imports it only to accept its tensors, which costs a training run
  2.2 s of CPU; we write Python floats. A torch already imported is left as it is."""
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX's fallback
  try:
    from tensorboardX import SummaryWriter
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter(logdir, purge_step=purge_step)


class Reporter:
  """The progress bar, a log line and TensorBoard scalars every `train.log_every` steps (and at
  the last), validation scalars, and the goodput split at each log and at the end."""

  def __init__(self, cfg, *, workdir: str, start: int, lead: bool, say, goodput: Goodput):
    from tqdm import tqdm

    t = cfg.train
    self.cfg, self.say, self.goodput = cfg, say, goodput
    self.flops = perf.train_step_flops(cfg, t.batch_size)
    self.peak, self.peak_src = perf.peak_flops(t.peak_flops)
    self.lrs = train_step.schedules(cfg)
    self.writer = None
    if lead:
      tb = os.path.join(workdir, "tb")
      self.writer = summary_writer(tb, purge_step=start + 1 if start else None)
    self.bar = tqdm(
      total=t.num_steps,
      initial=start,
      desc=f"{train_step.expert_name(cfg)} stage {t.stage}",
      unit="step",
      disable=not lead,
      file=sys.stderr,
      mininterval=1.0,
      dynamic_ncols=True,
    )
    # step time: the seconds in steps and their data since the mark, over the steps since then
    # (validation and checkpoints are not steps; the first step, compiled, is not counted)
    self.mark, self.mark_step = None, start
    self.skipped = 0  # non-finite steps skipped (train.skip_nonfinite)

  def step(self, step: int, parts: dict) -> None:
    self.bar.update(1)
    if self.mark is None:
      self.mark, self.mark_step = self._stepping_s(), step
    t = self.cfg.train
    if step % t.log_every and step != t.num_steps:
      return
    values = {k: float(to_host(v)) for k, v in parts.items() if k != "finite"}
    rate = self._rate(step)
    lr = {f"lr_{k}": float(s(step - 1)) for k, s in self.lrs.items()}
    if t.stage == 1:
      lr.pop("lr_lora")
    if rate:
      self.bar.set_postfix(
        loss=f"{values['total']:.4f}",
        step_s=f"{rate['step_time_s']:.3g}",
        ex_s=f"{rate['examples_per_s']:.3g}",
        mfu=f"{rate['mfu']:.1%}",
        refresh=False,
      )
    self.say(self._line(step, values, lr, rate))
    if self.writer:
      extra = {"skipped_nonfinite": self.skipped}
      for k, v in {**values, **lr, **rate, **extra}.items():
        self.writer.add_scalar(f"train/{k}", v, step)
      for k, v in self.goodput.split().items():
        self.writer.add_scalar(f"goodput/{k}", v, step)

  def _stepping_s(self) -> float:
    return self.goodput.seconds["step"] + self.goodput.seconds["data"]

  def _rate(self, step: int) -> dict:
    if step <= self.mark_step:
      return {}
    now = self._stepping_s()
    dt = max(now - self.mark, 1e-9) / (step - self.mark_step)
    self.mark, self.mark_step = now, step
    rate = {
      "step_time_s": dt,
      "examples_per_s": self.cfg.train.batch_size / dt,
      "mfu": self.flops / dt / (self.peak * jax.device_count()),
    }
    return rate

  def _line(self, step: int, values: dict, lr: dict, rate: dict) -> str:
    loss_txt = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "total")
    msg = f"step {step}: loss {values['total']:.4f} ({loss_txt})"
    msg += "".join(f", {k} {v:.3g}" for k, v in lr.items())
    if rate:
      msg += (
        f", {rate['step_time_s']:.3g} s/step, {rate['examples_per_s']:.3g} examples/s, "
        f"MFU {rate['mfu']:.1%} (vs {self.peak_src})"
      )
    if self.skipped:
      msg += f", {self.skipped} non-finite steps skipped"
    return msg

  def validation(self, step: int, scores: dict) -> None:
    shown = [k for k in METRICS if k in scores]
    if self.writer:
      for k in shown:
        self.writer.add_scalar(f"val/{scores['map']}/{k}", scores[k], step)
    self.say(
      f"validation at step {step} ({scores['map']} map, {scores['metrics']} metrics, "
      f"{counted(scores['videos'], 'video')}): " + ", ".join(f"{k} {scores[k]:.4f}" for k in shown)
    )

  def close(self) -> None:
    self.bar.close()
    self.say(self.goodput.line())
    if self.writer:
      self.writer.close()
