"""`visage-train`: train one expert, one stage, resumable.

visage-train --config=configs/visage.py:6b --workdir=DIR --config.data.dir=PREPARED
    [--config.FIELD=VALUE ...]

The config fields set most (any field of configs/visage.py can be set the same way):
  --config.train.expert=1|2          --config.train.stage=1|2
  --config.train.init=CKPT_OR_WORKDIR  --config.train.partner=OTHER_EXPERT (fused validation)
  --config.train.batch_size=N (global) --config.train.grad_accum_steps=K
  --config.train.num_steps=N         --config.train.eval_every=N (-1: each epoch)
  --config.train.lr_lora=…  --config.train.lr_decoder_stage1=…  --config.train.lr_decoder_stage2=…
  --config.train.warmup_steps=N      --config.train.cosine_steps=N
  --config.train.remat_policy=auto|none|full|save_matmuls|…
  --config.train.val_metrics=challenge|original
  --config.data.val_split=public_test  --config.mesh.data=-1  --config.mesh.fsdp=1

Multi-host: run the same command on every host with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID set (or VISAGE_DISTRIBUTED=auto on a cluster JAX detects); `train.batch_size`
is the global batch. Exit codes: 0 done, 2 a mistake (one line on stderr, no workdir made) or a
non-finite step, 130 interrupted (Ctrl-C; SIGTERM saves the step first).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from visage_jax.cli import check_output, fail, parse_config_flags, run_app

FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax.training import checks

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.config.data.dir:
    fail("visage-train", "--workdir and --config.data.dir are required")
  check_output("visage-train", FLAGS.workdir, flag="--workdir")
  try:  # the config's own mistakes before JAX is imported (seconds), then the devices'
    cfg = checks.checked_config(FLAGS.config, FLAGS.workdir)
    from visage_jax.runtime import parallel

    parallel.initialize_distributed()
    checked = checks.on_devices(cfg, FLAGS.workdir)
  except (checks.TrainError, ValueError) as e:
    fail("visage-train", str(e))
  _train(checked)


def _train(checked) -> None:
  from visage_jax import checkpoint as ckpt
  from visage_jax.data.challenge import DataError
  from visage_jax.training.checks import TrainError
  from visage_jax.training.loop import run

  try:
    result = run(checked, log=lambda m: print(m, flush=True))
  except (TrainError, ckpt.CheckpointError, DataError, ValueError, FileNotFoundError) as e:
    fail("visage-train", str(e))
  best = f", best validation at step {result['best_step']}" if result["best_step"] else ""
  print(f"done at step {result['step']}{best}", flush=True)


def run_cli():
  config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (resumed if present)")
  flags.mark_flags_as_required(["config"])
  run_app(main, "visage-train", flags_parser=lambda a: parse_config_flags(a, "visage-train"))


if __name__ == "__main__":
  run_cli()
