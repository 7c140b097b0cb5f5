"""`visage-train`: train one expert, one stage, resumable.

visage-train --config=configs/visage.py:6b --workdir=DIR [--config.train.stage=1|2]
    [--config.train.expert=1|2] [--config.data.dir=PREPARED] [--config.train.init=CKPT]
    [--config.train.num_steps=N]
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (resumed if present)")
FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax.trainer import run

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.config.data.dir:
    print("visage-train: error: --workdir and --config.data.dir are required", file=sys.stderr)
    sys.exit(2)
  result = run(FLAGS.config, FLAGS.workdir, log=lambda m: print(m, flush=True))
  print(f"done at step {result['step']}")


def run_cli():
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run_cli()
