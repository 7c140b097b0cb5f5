"""Dual-expert inference speed and memory on whatever accelerator JAX sees.

Builds the model from the config with random weights directly on the device (no checkpoint
needed: speed and memory do not depend on the values), compiles the one-program forward of both
experts plus the fusion, and reports fused frames per second, XLA's memory analysis, the device's
peak memory, and MFU (the backbone's matmul FLOPs, `visage_jax.training.flops`, over the time, as a
fraction of a plain bf16 matmul's FLOP/s measured in the same run and of the card's nominal peak).

    python benchmarks/gpu_predict.py --config=6b [--batch=1,2] [--iters=10] [--out=result.json]
        [--attention=auto,xla,cudnn] [--resize_conv=separate,folded]

`--resize_conv` compares the heads' resize-then-convolve forms (`model.resize_conv`; "auto" keeps
"separate" off a CPU until this comparison has been run on a GPU).

Each result is printed as one JSON line as soon as it is measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _emit(record, out):
  line = json.dumps(record)
  print(line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


def plan_gib(compiled) -> float | None:
  """XLA's plan of a compiled program's device memory: arguments + outputs + temporaries −
  aliased, GiB (None where the backend gives no plan)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  total = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )
  return round(total / 2**30, 2)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="6b")
  ap.add_argument("--batch", default="1")
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--attention", default="auto", help="comma list: auto, xla, cudnn")
  ap.add_argument("--resize_conv", default="auto", help="comma list: auto, folded, separate")
  ap.add_argument("--out", default="")
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from configs.visage import get_config
  from visage_jax.models.visage import ViSAGE
  from visage_jax.training.flops import backbone_flops, matmul_flops, nominal_peak_flops

  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", str(dev))
  peak = nominal_peak_flops(dev)
  peak = peak / 1e12 if peak else None
  mm = matmul_flops(n=8192, iters=10, dtype=jnp.bfloat16) / 1e12
  _emit({"device": kind, "jax": jax.__version__, "matmul_bf16_tflops": round(mm, 1)}, args.out)

  choices = itertools.product(args.attention.split(","), args.resize_conv.split(","))
  for impl, resize_conv in choices:
    cfg = get_config(args.config)
    cfg.model.backbone.attention_impl = impl
    cfg.model.resize_conv = resize_conv
    t0 = time.perf_counter()
    model = nnx.jit(lambda c=cfg: ViSAGE(c.model, rngs=nnx.Rngs(0)))()
    graphdef, state = nnx.split(model)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))

    def forward(state, clip, graphdef=graphdef):
      out = nnx.merge(graphdef, state)(clip)
      return out["fused"], out["expert1"], out["expert2"]

    fwd = jax.jit(forward)
    b = cfg.model.backbone
    for batch in [int(x) for x in args.batch.split(",")]:
      clip = jnp.zeros((batch, b.num_frames, b.img_size, b.img_size, 3), jnp.float32)
      t0 = time.perf_counter()
      compiled = fwd.lower(state, clip).compile()
      compile_s = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      flops = backbone_flops(cfg, batch)
      jax.block_until_ready(compiled(state, clip))
      jax.block_until_ready(compiled(state, clip))
      t0 = time.perf_counter()
      for _ in range(args.iters):
        res = compiled(state, clip)
      jax.block_until_ready(res)
      dt = (time.perf_counter() - t0) / args.iters
      frames = batch * b.num_frames
      stats = dev.memory_stats() or {}
      rec = {
        "config": args.config,
        "attention": impl,
        "resize_conv": resize_conv,
        "batch": batch,
        "frames_per_call": frames,
        "step_s": round(dt, 4),
        "fused_frames_per_s": round(frames / dt, 1),
        "backbone_tflops_per_call": round(flops / 1e12, 2),
        "achieved_tflops": round(flops / dt / 1e12, 1),
        "mfu_vs_nominal": round(flops / dt / 1e12 / peak, 3) if peak else None,
        "fraction_of_matmul": round(flops / dt / 1e12 / mm, 3),
        "param_gib": round(param_bytes / 2**30, 2),
        "xla_temp_gib": round(mem.temp_size_in_bytes / 2**30, 2) if mem else None,
        "xla_args_gib": round(mem.argument_size_in_bytes / 2**30, 2) if mem else None,
        "xla_total_gib": plan_gib(compiled),
        "peak_device_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
        "init_s": round(init_s, 1),
        "compile_s": round(compile_s, 1),
      }
      _emit(rec, args.out)


if __name__ == "__main__":
  main()
