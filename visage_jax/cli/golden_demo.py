"""Placeholder main job until `visage-demo` lands: convert the golden PyTorch checkpoints with the
`tiny` preset and compare our maps with the original's outputs.

    python -m visage_jax.cli.golden_demo [--golden=../shared/golden] [--output=out/golden]
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
from absl import flags

from visage_jax.cli import run_app

flags.DEFINE_string("golden", "../shared/golden", "Folder with the golden files")
flags.DEFINE_string("output", "out/golden", "Where the converted checkpoint goes (replaced)")
FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from configs.visage import get_config
  from conversion.convert import convert
  from visage_jax.inference import Predictor

  logging.set_verbosity(logging.WARNING)
  g = FLAGS.golden
  out = os.path.abspath(FLAGS.output)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  convert(
    get_config("tiny"),
    backbone=os.path.join(g, "backbone_t4.pt"),
    expert1=os.path.join(g, "expert1.pth"),
    expert2=os.path.join(g, "expert2.pth"),
    output=out,
  )
  expected = np.load(os.path.join(g, "expected.npz"))
  clip = expected["x"].transpose(0, 2, 3, 4, 1)
  maps = Predictor.load(out).predict_clip(clip)
  print(f"{'map':<8} {'max |ours - original|':>22}")
  worst = 0.0
  for ours, theirs in [("expert1", "e1_out"), ("expert2", "e2_out"), ("fused", "fused_logit_a05")]:
    err = float(np.max(np.abs(maps[ours] - expected[theirs][:, 0])))
    worst = max(worst, err)
    print(f"{ours:<8} {err:>22.3e}")
  ok = worst <= 1e-5
  print(
    "parity with the original:", "OK" if ok else "FAILED", f"(tolerance 1e-5, checkpoint {out})"
  )
  sys.exit(0 if ok else 1)


def run():
  run_app(main, "golden_demo")


if __name__ == "__main__":
  run()
