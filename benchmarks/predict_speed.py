"""Dual-expert prediction speed on this machine's CPU, for `tiny` and a mid-size config, with the
achieved FLOP/s as a fraction of a plain float32 matmul's FLOP/s measured in the same run.

FLOPs come from XLA's cost analysis of the compiled forward with the blocks unrolled (a scan's
body would be counted once). Random weights: speed does not depend on the values.

    python benchmarks/predict_speed.py [--iters=3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mid_config():
  from configs.visage import get_config

  cfg = get_config("tiny")
  b = cfg.model.backbone
  b.embed_dim, b.depth, b.num_heads, b.taps = 384, 12, 6, (2, 5, 8, 11)
  cfg.model.neck_dim, cfg.model.decoder_dim = 128, 32
  cfg.model.lora.rank, cfg.model.lora.alpha = 16, 32.0
  return cfg


def measure(cfg, name, iters, jax, jnp, nnx):
  from visage_jax.models.visage import ViSAGE

  cfg.model.backbone.scan_layers = False
  model = ViSAGE(cfg.model, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  b = cfg.model.backbone
  clip = jnp.zeros((1, b.num_frames, b.img_size, b.img_size, 3), jnp.float32)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)["fused"])
  compiled = fwd.lower(state, clip).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", 0.0))
  jax.block_until_ready(compiled(state, clip))
  t0 = time.perf_counter()
  for _ in range(iters):
    jax.block_until_ready(compiled(state, clip))
  dt = (time.perf_counter() - t0) / iters
  return {
    "config": name,
    "frames_per_call": b.num_frames,
    "step_s": round(dt, 3),
    "fused_frames_per_s": round(b.num_frames / dt, 2),
    "gflop_per_call": round(flops / 1e9, 1),
    "achieved_gflops": round(flops / dt / 1e9, 1),
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--iters", type=int, default=3)
  args = ap.parse_args()
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from configs.visage import get_config

  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(5):
    mm(a).block_until_ready()
  matmul = 2 * n**3 * 5 / (time.perf_counter() - t0) / 1e9
  print(
    json.dumps(
      {
        "device": jax.devices()[0].device_kind,
        "cpus": os.cpu_count(),
        "matmul_f32_gflops": round(matmul, 1),
      }
    )
  )
  for name, cfg in (("tiny", get_config("tiny")), ("mid", mid_config())):
    rec = measure(cfg, name, args.iters, jax, jnp, nnx)
    rec["fraction_of_matmul"] = round(rec["achieved_gflops"] / matmul, 3)
    print(json.dumps(rec))


if __name__ == "__main__":
  main()
