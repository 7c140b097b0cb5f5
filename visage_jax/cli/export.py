"""`visage-export`: trained weights out, as one checkpoint for visage-eval and visage-predict, or
as the original's PyTorch files.

visage-export --workdir=EXPERT1_WORKDIR --workdir=EXPERT2_WORKDIR --output=DIR
    writes a checkpoint with both experts (each workdir's best weights).
visage-export --format=pytorch (--checkpoint=DIR | --workdir=W ...) --output=OUT
    [--full_state_dict] writes the original's expert files (see conversion/export.py);
    --format=safetensors the same tensors as .safetensors. Needs the `[convert]` extra for
    pytorch.

Exit codes: 0 done, 2 a mistake (one line on stderr, nothing written), 130 interrupted.
"""

from __future__ import annotations

from absl import flags

from visage_jax.cli import check_apart, check_new_output, fail, require_extra, run_app

FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  fmt = FLAGS.format
  if not FLAGS.output:
    fail("visage-export", "--output is required")
  if fmt == "orbax":
    clash = (
      "--checkpoint" if FLAGS.checkpoint else "--full_state_dict" if FLAGS.full_state_dict else ""
    )
    if clash:
      fail(
        "visage-export",
        f"{clash} is for --format=pytorch or safetensors; --format=orbax "
        "merges training workdirs (--workdir)",
      )
  elif bool(FLAGS.checkpoint) == bool(FLAGS.workdir):
    fail("visage-export", f"--format={fmt} takes either --checkpoint or --workdir (repeatable)")
  if not FLAGS.checkpoint and not FLAGS.workdir:
    fail("visage-export", "--workdir (once per expert) is required")
  if fmt != "orbax":
    require_extra("visage-export", "torch", f"--format={fmt}")
  inputs = [("--workdir", w) for w in FLAGS.workdir] + [("--checkpoint", FLAGS.checkpoint)]
  check_apart("visage-export", FLAGS.output, inputs)
  check_new_output("visage-export", FLAGS.output)  # before any weights are read (minutes at 6B)
  _export(fmt)
  print(f"wrote {FLAGS.output}")


def _export(fmt: str) -> None:
  from visage_jax import checkpoint as ckpt  # JAX: after the checks, which need none of it
  from visage_jax.training.checks import TrainError

  try:
    if fmt == "orbax":
      from visage_jax.training.weights import export

      export(FLAGS.workdir, FLAGS.output)
    else:
      _export_original(fmt)
  except (TrainError, ckpt.CheckpointError, FileNotFoundError) as e:
    fail("visage-export", str(e))


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


def run():
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
  run_app(main, "visage-export")


if __name__ == "__main__":
  run()
