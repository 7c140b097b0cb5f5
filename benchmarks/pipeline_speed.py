"""Training input speed against the cost of one training step, for the `tiny` config, in one run.

Makes a synthetic dataset (visage-synth), prepares it (visage-prepare), then measures clips/s of
the Grain pipeline (global batch 4, 8-frame windows at 224×224) with 0 and 2 worker processes,
and the time of one jitted training step of the tiny model on the same batch: forward of both
experts, the loss, gradients of the adapters and decoders, and an AdamW update (a stand-in for
the trainer's step, which lands with the training issue).

    python benchmarks/pipeline_speed.py [--videos=8] [--steps=10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--videos", type=int, default=8)
  ap.add_argument("--steps", type=int, default=10)
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from configs.visage import get_config
  from visage_jax.data.pipeline import make_loader
  from visage_jax.data.prepare import data_source, prepare
  from visage_jax.data.synth import write_dataset
  from visage_jax.data.video import CLIP_MEAN, CLIP_STD
  from visage_jax.metrics.losses import vsp_loss
  from visage_jax.models.visage import ViSAGE

  tmp = tempfile.mkdtemp()
  write_dataset(os.path.join(tmp, "ds"), videos=args.videos, frames=150, seed=0)
  prepare("ntire2026", os.path.join(tmp, "ds"), os.path.join(tmp, "prep"), size=224)
  ds, _ = data_source(os.path.join(tmp, "prep"), "train")
  result = {"device": jax.devices()[0].device_kind, "cpus": os.cpu_count()}
  gb = 4
  for workers in (0, 2):
    loader = make_loader(ds, num_frames=8, global_batch=gb, seed=0, worker_count=workers)
    it = iter(loader)
    batch = next(it)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      batch = next(it)
    dt = time.perf_counter() - t0
    result[f"pipeline_clips_per_s_workers{workers}"] = round(args.steps * gb / dt, 1)

  cfg = get_config("tiny")
  model = ViSAGE(cfg.model, rngs=nnx.Rngs(0))
  trainable = nnx.Any(nnx.LoRAParam, nnx.PathContains("expert1"), nnx.PathContains("expert2"))
  opt = nnx.Optimizer(model, optax.adamw(1e-4, weight_decay=1e-4), wrt=trainable)
  mean, std = jnp.asarray(CLIP_MEAN), jnp.asarray(CLIP_STD)

  @nnx.jit
  def step(model, opt, batch):
    clip = (batch["frames"].astype(jnp.float32) / 255 - mean) / std

    def loss_fn(model):
      out = model(clip)
      total = 0.0
      for name in ("expert1", "expert2"):
        total += vsp_loss(out[name], batch["saliency"], batch["fixations"], cfg=cfg.loss)[0]
      return total

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
    opt.update(model, grads)
    return loss

  feed = {k: jnp.asarray(batch[k]) for k in ("frames", "saliency", "fixations")}
  jax.block_until_ready(step(model, opt, feed))
  t0 = time.perf_counter()
  n = max(2, args.steps // 3)
  for _ in range(n):
    jax.block_until_ready(step(model, opt, feed))
  step_s = (time.perf_counter() - t0) / n
  result["train_step_s"] = round(step_s, 3)
  result["train_clips_per_s"] = round(gb / step_s, 1)
  result["pipeline_to_step_ratio"] = round(
    result["pipeline_clips_per_s_workers0"] / (gb / step_s), 1
  )
  print(json.dumps(result))
  del np


if __name__ == "__main__":
  main()
