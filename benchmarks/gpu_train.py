"""Training step time and MFU on whatever accelerator JAX sees.

Builds the training model of `--expert` and `--stage` with random weights directly on the devices
(speed does not depend on the values), jits `visage_jax.training.step`'s step over a mesh of
all local devices (data parallel by default), and times `--iters` steps on random clips. Reports
the step time, examples/s, the model FLOPs of a step (`training.flops.train_step_flops`: the
backbone forward, plus the backward through it in stage 2; remat recomputation not counted),
MFU against the card's nominal bf16 peak and against a bf16 matmul measured in the same run, and
the device's peak memory.

    python benchmarks/gpu_train.py --config=6b [--stage=2] [--expert=2] [--batch=1] [--accum=1]
        [--iters=10] [--remat=full] [--mesh=-1,1,1] [--out=result.json]

With `--accum=K` each step accumulates K micro-batches of `--batch` clips per device
(`train.grad_accum_steps`): the global batch is batch × data × fsdp × K.

Each result is printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_batch(cfg) -> dict:
  """A global batch of `cfg.train.batch_size` random clips at the model's size (speed does not
  depend on the values)."""
  import numpy as np

  rng = np.random.default_rng(0)
  n, b = cfg.train.batch_size, cfg.model.backbone
  f, s = b.num_frames, b.img_size
  return {
    "frames": rng.integers(0, 255, (n, f, s, s, 3), dtype=np.uint8),
    "saliency": rng.random((n, f, s, s), dtype=np.float32),
    "fixations": (rng.random((n, f, s, s)) > 0.999).astype(np.float32),
    "mask": np.ones((n, f), bool),
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="6b")
  ap.add_argument("--stage", type=int, default=2)
  ap.add_argument("--expert", type=int, default=2)
  ap.add_argument("--batch", type=int, default=1, help="clips per device (per micro-batch)")
  ap.add_argument("--accum", type=int, default=1, help="micro-batches per step")
  ap.add_argument("--frames", type=int, default=0, help="0: the config's")
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--remat", default="full")
  ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
  ap.add_argument("--attention", default="auto", help="model.backbone.attention_impl")
  ap.add_argument("--out", default="")
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from configs.visage import get_config
  from visage_jax.runtime import parallel
  from visage_jax.training import flops as perf
  from visage_jax.training import step as train_step

  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", str(dev))
  dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
  mm = perf.matmul_flops(n=8192 if jax.default_backend() != "cpu" else 1024, dtype=dtype)
  nominal = perf.nominal_peak_flops(dev)

  cfg = get_config(args.config)
  cfg.model.backbone.attention_impl = args.attention
  t = cfg.train
  t.stage, t.expert, t.remat_policy = args.stage, args.expert, args.remat
  if args.frames:
    cfg.model.backbone.num_frames = args.frames
  data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
  mesh = parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
  t.grad_accum_steps = args.accum
  t.batch_size = args.batch * mesh.shape["data"] * mesh.shape["fsdp"] * args.accum

  t0 = time.perf_counter()
  model = nnx.jit(lambda: train_step.init_model(cfg))()
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  step, shardings = train_step.jit_step(graphdef, cfg, tx, mesh, state, frozen)
  state, frozen = parallel.put((state, frozen), shardings)
  del model, trainable, stats
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0

  n, f = t.batch_size, cfg.model.backbone.num_frames
  batch = jax.device_put(random_batch(cfg), parallel.batch_sharding(mesh))
  key = jax.random.key(0)
  t0 = time.perf_counter()
  state, parts = step(state, frozen, batch, key)
  jax.block_until_ready(parts["total"])
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(args.iters):
    state, parts = step(state, frozen, batch, jax.random.fold_in(key, i))
  jax.block_until_ready(parts["total"])
  dt = (time.perf_counter() - t0) / args.iters
  flops = perf.train_step_flops(cfg, n)
  ndev = mesh.devices.size
  try:
    peak_mem = max(d.memory_stats().get("peak_bytes_in_use", 0) for d in mesh.devices.flat)
  except Exception:  # CPU devices have no memory statistics
    peak_mem = 0
  record = {
    "device": kind,
    "devices": ndev,
    "jax": jax.__version__,
    "config": args.config,
    "stage": t.stage,
    "expert": t.expert,
    "global_batch": n,
    "grad_accum_steps": args.accum,
    "frames": f,
    "remat_policy": args.remat,
    "mesh": dict(mesh.shape),
    "init_s": round(init_s, 1),
    "compile_and_first_step_s": round(compile_s, 1),
    "step_time_s": round(dt, 4),
    "examples_per_s": round(n / dt, 2),
    "frames_per_s": round(n * f / dt, 1),
    "model_tflops_per_step": round(flops / 1e12, 2),
    "matmul_tflops_measured": round(mm / 1e12, 1),
    "mfu_vs_measured_matmul": round(flops / dt / (mm * ndev), 3),
    "mfu_vs_nominal": round(flops / dt / (nominal * ndev), 3) if nominal else None,
    "peak_device_gib": round(peak_mem / 2**30, 2),
    "loss": float(parts["total"]),
  }
  line = json.dumps(record)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as fh:
      fh.write(line + "\n")


if __name__ == "__main__":
  main()
