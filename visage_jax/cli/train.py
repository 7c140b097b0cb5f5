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
visage-export --format=pytorch (--checkpoint=DIR | --workdir=W ...) --output=OUT
    [--full_state_dict] writes the original's expert files (see conversion/export.py);
    --format=safetensors the same tensors as .safetensors.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from visage_jax.cli import check_apart, check_output, fail, parse_flags, run_app

FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax.preflight import (
    TrainError,
    check_batch,
    check_config,
    check_workdir,
    resolved,
    train_mesh,
  )

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.config.data.dir:
    fail("visage-train", "--workdir and --config.data.dir are required")
  check_output("visage-train", FLAGS.workdir, flag="--workdir")
  cfg = resolved(FLAGS.config)
  try:  # the config's own mistakes before JAX is imported (seconds), then the batch's split
    check_config(cfg)
    check_workdir(FLAGS.workdir)
    from visage_jax import parallel

    parallel.initialize_distributed()
    check_batch(cfg, train_mesh(cfg))
  except (TrainError, ValueError) as e:
    fail("visage-train", str(e))
  from visage_jax import checkpoint as ckpt
  from visage_jax.data.challenge import DataError
  from visage_jax.trainer import run

  try:
    result = run(cfg, FLAGS.workdir, log=lambda m: print(m, flush=True))
  except (TrainError, ckpt.CheckpointError, DataError, ValueError, FileNotFoundError) as e:
    fail("visage-train", str(e))
  best = f", best validation at step {result['best_step']}" if result["best_step"] else ""
  print(f"done at step {result['step']}{best}", flush=True)


def export_main(_):
  from absl import logging

  from visage_jax import checkpoint as ckpt
  from visage_jax.preflight import TrainError

  logging.set_verbosity(logging.WARNING)
  fmt = FLAGS.format
  if not FLAGS.output:
    fail("visage-export", "--output is required")
  if fmt == "orbax":
    if FLAGS.checkpoint or FLAGS.full_state_dict:
      fail("visage-export", "--format=orbax takes --workdir only (it merges training workdirs)")
  elif bool(FLAGS.checkpoint) == bool(FLAGS.workdir):
    fail("visage-export", f"--format={fmt} takes either --checkpoint or --workdir (repeatable)")
  if not FLAGS.checkpoint and not FLAGS.workdir:
    fail("visage-export", "--workdir (once per expert) is required")
  inputs = [("--workdir", w) for w in FLAGS.workdir] + [("--checkpoint", FLAGS.checkpoint)]
  check_apart("visage-export", FLAGS.output, inputs)
  from conversion.convert import new_output
  from conversion.torch_io import ConversionError

  try:  # before any weights are read (minutes at 6B)
    new_output(FLAGS.output)
  except ConversionError as e:
    fail("visage-export", str(e))
  try:
    if fmt == "orbax":
      from visage_jax.provenance import export

      export(FLAGS.workdir, FLAGS.output)
    else:
      _export_original(fmt)
  except (TrainError, ckpt.CheckpointError, FileNotFoundError) as e:
    fail("visage-export", str(e))
  print(f"wrote {FLAGS.output}")


def _export_original(fmt: str) -> None:
  from conversion import export as to_original
  from conversion.torch_io import ConversionError

  try:
    if FLAGS.checkpoint:
      weights = to_original.weights_of_checkpoint(
        FLAGS.checkpoint, with_backbone=FLAGS.full_state_dict
      )
    else:
      weights = to_original.weights_of_workdirs(FLAGS.workdir)
    to_original.export(weights, FLAGS.output, fmt=fmt, full=FLAGS.full_state_dict)
  except ConversionError as e:
    fail("visage-export", str(e))


def config_mistake(argv, error: Exception) -> str:
  """ml_collections' error about a --config.* override, as one line naming the flag."""
  import re

  text = " ".join(str(error).replace("\\n", " ").replace("\n", " ").strip("'\" ").split())
  hint = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
  for arg in argv:
    name = arg[2:].split("=", 1)[0]
    if not name.startswith("config."):
      continue
    if hint and name.rsplit(".", 1)[-1] == hint.group(2):
      return f"--{name}: no such field; did you mean --{name.rsplit('.', 1)[0]}.{hint.group(1)}?"
  return f"--config: {text}"


def _parse_flags(argv):
  """The commands' parser, with a mistaken --config.* override (an unknown field, a value of the
  wrong type) as one line instead of ml_collections' traceback."""
  try:
    return parse_flags(argv, "visage-train")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail("visage-train", config_mistake(argv, e))


def run_cli():
  config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (resumed if present)")
  flags.mark_flags_as_required(["config"])
  run_app(main, "visage-train", flags_parser=_parse_flags)


def run_export():
  flags.DEFINE_enum(
    "format",
    "orbax",
    ["orbax", "pytorch", "safetensors"],
    "orbax: one checkpoint for visage-eval/predict; pytorch, safetensors: the original's files",
  )
  flags.DEFINE_multi_string("workdir", [], "A training workdir (one per expert)")
  flags.DEFINE_string("checkpoint", None, "A converted or exported checkpoint")
  flags.DEFINE_bool("full_state_dict", False, "Write each expert's whole model.state_dict()")
  flags.DEFINE_string("output", None, "The directory to write (must not exist)")
  run_app(export_main, "visage-export")


if __name__ == "__main__":
  run_cli()
