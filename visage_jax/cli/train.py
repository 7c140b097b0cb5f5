"""`visage-train`: train one expert, one stage, resumable; `visage-export`: workdirs → checkpoint.

visage-train --config=configs/visage.py:6b --workdir=DIR [--config.train.stage=1|2]
    [--config.train.expert=1|2] [--config.data.dir=PREPARED] [--config.train.init=CKPT]
    [--config.train.partner=OTHER] [--config.train.num_steps=N] [--config.train.eval_every=N]

Multi-host: run the same command on every host with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID set (or VISAGE_DISTRIBUTED=auto on a cluster JAX detects); `train.batch_size`
is the global batch.

visage-export --workdir=EXPERT1_WORKDIR --workdir=EXPERT2_WORKDIR --output=DIR
    writes a checkpoint with both experts (each workdir's best weights) that visage-eval and
    visage-predict load.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from visage_jax.cli import fail

FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax import parallel

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.config.data.dir:
    fail("visage-train", "--workdir and --config.data.dir are required")
  try:
    parallel.initialize_distributed()
  except ValueError as e:
    fail("visage-train", str(e))
  from visage_jax import checkpoint as ckpt
  from visage_jax.trainer import TrainError, run

  try:
    result = run(FLAGS.config, FLAGS.workdir, log=lambda m: print(m, flush=True))
  except (TrainError, ckpt.CheckpointError, ValueError, FileNotFoundError) as e:
    fail("visage-train", str(e))
  best = f", best validation at step {result['best_step']}" if result["best_step"] else ""
  print(f"done at step {result['step']}{best}", flush=True)


def export_main(_):
  from absl import logging

  from visage_jax import checkpoint as ckpt
  from visage_jax.trainer import TrainError, export

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.output:
    fail("visage-export", "--workdir (once per expert) and --output are required")
  try:
    export(FLAGS.workdir, FLAGS.output)
  except (TrainError, ckpt.CheckpointError, FileNotFoundError) as e:
    fail("visage-export", str(e))
  print(f"wrote {FLAGS.output}")


def run_cli():
  config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (resumed if present)")
  flags.mark_flags_as_required(["config"])
  app.run(main)


def run_export():
  flags.DEFINE_multi_string("workdir", [], "A training workdir (one per expert)")
  flags.DEFINE_string("output", None, "The checkpoint directory to write (must not exist)")
  app.run(export_main)


if __name__ == "__main__":
  run_cli()
