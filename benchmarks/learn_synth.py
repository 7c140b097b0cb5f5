"""Does the two-stage recipe learn visage-synth? The `tiny` model from the golden InternVideo2
backbone, at a CPU-sized resolution (112×112, 4 frames), trained with the real trainer
(`visage_jax.training.loop.run`, the same code as `visage-train`) in four runs:

    stage 1 expert 1  →  stage 1 expert 2 (partner: the first)  →
    stage 2 expert 1 (init: its stage 1, partner: expert 2)  →  stage 2 expert 2 (init: its stage 1,
    partner: expert 1 after stage 2)

Every validation from the second run on scores the fused map (challenge variant, model size). The
starting value is the fused CC of both experts untrained. Prints one JSON line per validation and
a summary with the curve and the minutes.

    python benchmarks/learn_synth.py [--steps=40,60,40,40] [--eval_every=20] [--workdir=DIR]

The decoder learning rates are 10× the 6B recipe's (the tiny decoders are 100× smaller, and the
steps few); everything else is the recipe's (EMA 0.99 in stage 2 of Expert 2, BatchNorm frozen in
stage 2, Expert 2's auxiliary losses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden"
)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", default="40,60,40,40", help="steps of the four runs")
  ap.add_argument("--eval_every", type=int, default=20)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--workdir", default="")
  args = ap.parse_args()

  from configs.visage import get_config
  from conversion.convert import convert
  from visage_jax.data.prepare import prepare
  from visage_jax.data.synth import write_dataset
  from visage_jax.training import loop as trainer
  from visage_jax.training import step as train_step
  from visage_jax.training import weights as provenance
  from visage_jax.training.checks import check_run

  size, frames = 112, 4
  root = args.workdir or tempfile.mkdtemp()
  write_dataset(os.path.join(root, "ds"), videos=16, frames=120, seed=0)
  prep = os.path.join(root, "prep")
  prepare("ntire2026", os.path.join(root, "ds"), prep, size=size)

  def config(expert, stage, steps):
    cfg = get_config("tiny")
    b = cfg.model.backbone
    b.img_size, b.num_frames, b.pretrained_num_frames = size, frames, 4
    cfg.model.output_size = size
    t = cfg.train
    t.expert, t.stage, t.num_steps, t.batch_size = expert, stage, steps, args.batch
    t.lr_decoder_stage1, t.lr_decoder_stage2 = 1e-3, 1e-4
    t.eval_every, t.checkpoint_every, t.log_every = args.eval_every, steps, 10
    cfg.data.dir, cfg.data.val_split = prep, "public_test"
    return cfg

  bb = os.path.join(root, "backbone")
  convert(config(1, 1, 1), backbone=os.path.join(GOLDEN, "backbone_t4.pt"), output=bb)

  t0 = time.time()
  # the starting point: both experts untrained, fused
  c1 = config(1, 1, 1)
  m1 = train_step.init_model(c1)
  provenance.load_init(m1, bb, "expert1")
  m2 = train_step.init_model(config(2, 1, 1))
  provenance.load_init(m2, bb, "expert2")
  g, tr, st, fr = train_step.split(m1, c1)
  validate = trainer.make_validator(
    train_step.eval_graphdef(g, c1, tr, st, fr), c1, prep, "public_test", partner=("expert2", m2)
  )
  start = validate(tr, st, fr)
  curve = [{"run": "untrained", "step": 0, "fused_cc": round(start["cc"], 4), "minutes": 0.0}]
  print(json.dumps(curve[-1]), flush=True)

  steps = [int(s) for s in args.steps.split(",")]
  runs = [
    ("s1e1", 1, 1, bb, ""),
    ("s1e2", 2, 1, bb, "s1e1"),
    ("s2e1", 1, 2, "s1e1", "s1e2"),
    ("s2e2", 2, 2, "s1e2", "s2e1"),
  ]
  for (name, expert, stage, init, partner), n in zip(runs, steps):
    cfg = config(expert, stage, n)
    cfg.train.init = init if init == bb else os.path.join(root, init)
    cfg.train.partner = os.path.join(root, partner) if partner else ""
    work = os.path.join(root, name)
    trainer.run(check_run(cfg, work), log=lambda m: None)
    for line in open(os.path.join(work, "validation.jsonl")):
      r = json.loads(line)
      rec = {
        "run": name,
        "step": r["step"],
        "map": r["map"],
        "cc": round(r["cc"], 4),
        "nss": round(r["nss"], 4),
        "minutes": round((time.time() - t0) / 60, 2),
      }
      if r["map"] == "fused":
        rec["fused_cc"] = rec["cc"]
      curve.append(rec)
      print(json.dumps(rec), flush=True)
  fused = [c["fused_cc"] for c in curve if "fused_cc" in c]
  print(
    json.dumps(
      {
        "start_fused_cc": fused[0],
        "final_fused_cc": fused[-1],
        "best_fused_cc": max(fused),
        "total_steps": sum(steps),
        "minutes": round((time.time() - t0) / 60, 2),
        "workdir": root,
      }
    )
  )


if __name__ == "__main__":
  main()
