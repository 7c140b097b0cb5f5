"""Can the model learn visage-synth? A stage-1 training run of one expert on CPU, from the golden
InternVideo2 backbone, at a CPU-sized resolution (112×112, 4 frames), reporting validation CC
(challenge variant, at model size) as it trains. Not the trainer (that lands with the training
issue): a plain loop over `visage_jax.train`'s jitted step and the Grain pipeline.

    python benchmarks/learn_synth.py [--expert=2] [--steps=200] [--eval_every=25]
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
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "golden"
)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--expert", type=int, default=2)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--eval_every", type=int, default=25)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--lr", type=float, default=1e-3)
  args = ap.parse_args()

  import jax
  from flax import nnx

  from configs.visage import get_config
  from conversion.convert import convert
  from visage_jax import metrics, parallel, train
  from visage_jax.data.pipeline import make_loader
  from visage_jax.data.prepare import data_source, prepare
  from visage_jax.data.synth import write_dataset
  from visage_jax.trainer import load_init

  size, frames = 112, 4
  tmp = tempfile.mkdtemp()
  write_dataset(os.path.join(tmp, "ds"), videos=16, frames=120, seed=0)
  prepare("ntire2026", os.path.join(tmp, "ds"), os.path.join(tmp, "prep"), size=size)

  cfg = get_config("tiny")
  b = cfg.model.backbone
  b.img_size, b.num_frames, b.pretrained_num_frames = size, frames, 4
  cfg.model.output_size = size
  cfg.train.expert, cfg.train.stage = args.expert, 1
  cfg.train.lr_decoder_stage1 = args.lr
  bb = os.path.join(tmp, "backbone")
  convert(cfg, backbone=os.path.join(GOLDEN, "backbone_t4.pt"), output=bb)
  model = train.init_model(cfg, seed=0)
  load_init(model, bb, train.expert_name(cfg))

  graphdef, trainable, stats, frozen = train.split(model, cfg)
  tx = train.make_optimizer(cfg)
  opt_state = tx.init(trainable)
  mesh = parallel.make_mesh()
  step, (trainable, stats, frozen, opt_state) = train.jit_train_step(
    graphdef, cfg, tx, mesh, trainable, stats, frozen, opt_state
  )
  train_src, _ = data_source(os.path.join(tmp, "prep"), "train")
  val_src, _ = data_source(os.path.join(tmp, "prep"), "public_test")
  loader = iter(make_loader(train_src, num_frames=frames, global_batch=args.batch, seed=0))
  val = next(
    iter(make_loader(val_src, num_frames=frames, global_batch=len(val_src), seed=1, num_epochs=1))
  )
  name = f"expert{args.expert}"

  eval_graphdef = train.eval_graphdef(graphdef, cfg, trainable, stats, frozen)

  @jax.jit
  def val_cc(trainable, stats, frozen, batch):
    model = nnx.merge(eval_graphdef, trainable, stats, frozen, copy=True)
    out = model(train.normalize_on_device(batch["frames"]))[name]
    return metrics.cc(out, batch["saliency"]).mean()

  curve = []
  t0 = time.time()
  cc0 = float(val_cc(trainable, stats, frozen, val))
  curve.append((0, round(cc0, 4)))
  print(json.dumps({"step": 0, "val_cc": cc0}), flush=True)
  rng = jax.random.key(0)
  for i in range(1, args.steps + 1):
    batch = next(loader)
    trainable, stats, opt_state, parts = step(trainable, stats, frozen, opt_state, batch, rng)
    if i % args.eval_every == 0 or i == args.steps:
      cc = float(val_cc(trainable, stats, frozen, val))
      curve.append((i, round(cc, 4)))
      print(
        json.dumps(
          {
            "step": i,
            "loss": float(parts["total"]),
            "val_cc": cc,
            "minutes": round((time.time() - t0) / 60, 2),
          }
        ),
        flush=True,
      )
  print(json.dumps({"expert": name, "curve": curve, "minutes": round((time.time() - t0) / 60, 2)}))


if __name__ == "__main__":
  main()
