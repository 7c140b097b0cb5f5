"""All six metrics on 20 frames at 224×224: jitted JAX against the float64 numpy references of
the tests (written from the challenge scorer and the MIT code), in the same run.

    python benchmarks/metrics_speed.py [--frames=20] [--size=224] [--repeats=5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--frames", type=int, default=20)
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()

  import jax
  from test_metrics import ref_ntire, ref_sauc_events

  from visage_jax import metrics

  rng = np.random.default_rng(0)
  t, n = args.frames, args.size
  s = rng.random((t, n, n)) ** 3
  g = rng.random((t, n, n)) ** 3
  events = [np.stack([rng.integers(0, n, 40), rng.integers(0, n, 40)], 1) for _ in range(t)]
  fix = np.zeros((t, n, n), np.int32)
  neg = np.zeros((t, n, n), np.int32)
  for i, e in enumerate(events):
    np.add.at(fix[i], (e[:, 0], e[:, 1]), 1)
    np.add.at(neg[(i + 1) % t], (e[:, 0], e[:, 1]), 1)

  @jax.jit
  def all_six(s, g, fix, neg):
    return (
      metrics.cc(s, g),
      metrics.sim(s, g),
      metrics.kld(s, g),
      metrics.nss(s, fix),
      metrics.auc_judd(s, fix),
      metrics.sauc(s, fix, neg),
    )

  args_j = [
    jax.device_put(x.astype(np.float32) if x.dtype == np.float64 else x) for x in (s, g, fix, neg)
  ]
  jax.block_until_ready(all_six(*args_j))
  t0 = time.perf_counter()
  for _ in range(args.repeats):
    jax.block_until_ready(all_six(*args_j))
  jax_s = (time.perf_counter() - t0) / args.repeats

  t0 = time.perf_counter()
  for i in range(t):
    ref_ntire(s[i], g[i], events[i])  # cc, sim, kld, nss, auc_judd
    ref_sauc_events(s[i], fix[i], neg[i])
  numpy_s = time.perf_counter() - t0

  print(
    json.dumps(
      {
        "frames": t,
        "size": n,
        "device": jax.devices()[0].device_kind,
        "jax_jit_s": round(jax_s, 4),
        "numpy_reference_s": round(numpy_s, 4),
        "speedup": round(numpy_s / jax_s, 1),
      }
    )
  )


if __name__ == "__main__":
  main()
