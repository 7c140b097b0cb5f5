"""`visage-prepare`: TFDS ArrayRecord files for training from a dataset as distributed.

visage-prepare --layout=ntire2026|dhf1k|hollywood2|ucf_sports --root=DIR --output=DIR [--fps=5]
    [--source_fps=25] [--skip_bad]

Frame-folder layouts (hollywood2, ucf_sports) carry no frame rate: --source_fps gives it.
"""

from __future__ import annotations

import sys

from absl import flags

from visage_jax.cli import check_apart, check_output, fail, must_be_positive, run_app

flags.DEFINE_enum(
  "layout", None, ["ntire2026", "dhf1k", "hollywood2", "ucf_sports"], "Dataset layout"
)
flags.DEFINE_string("root", None, "The dataset as distributed")
flags.DEFINE_string("output", None, "Where the prepared dataset goes (new or empty)")
flags.DEFINE_float("fps", 5.0, "Training frame rate: every round(source_fps / fps)-th frame")
flags.DEFINE_float(
  "source_fps", None, "The videos' frame rate (frame folders have none; files: overrides theirs)"
)
must_be_positive("fps", "source_fps")
flags.DEFINE_integer("offset", 0, "First source frame of the sampled sequence", lower_bound=0)
flags.DEFINE_integer("size", 224, "Model input size", lower_bound=1)
flags.DEFINE_list(
  "splits", None, "Splits to prepare (default: train and the test/validation split)"
)
flags.DEFINE_bool("skip_bad", False, "Skip broken videos and list them in OUTPUT/skipped.json")
FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax.data.challenge import DataError
  from visage_jax.data.prepare import prepare
  from visage_jax.data.video import VideoError

  logging.set_verbosity(logging.WARNING)
  _no_tfds_progress_bars()  # this command says which video it checks and writes
  for name in ("layout", "root", "output"):
    if not getattr(FLAGS, name):
      fail("visage-prepare", f"--{name} is required")
  check_apart("visage-prepare", FLAGS.output, [("--root", FLAGS.root)])
  check_output("visage-prepare", FLAGS.output)
  try:
    report = prepare(
      FLAGS.layout,
      FLAGS.root,
      FLAGS.output,
      splits=FLAGS.splits,
      size=FLAGS.size,
      fps=FLAGS.fps,
      source_fps=FLAGS.source_fps,
      offset=FLAGS.offset,
      skip_bad=FLAGS.skip_bad,
      progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
  except (DataError, VideoError) as e:
    fail("visage-prepare", str(e))
  for item in report["skipped"]:
    print(f"skipped {item['video']}: {item['error']}", file=sys.stderr)
  splits = ", ".join(f"{name} {n}" for name, n in report["splits"].items())
  print(
    f"prepared {sum(report['splits'].values())} videos ({splits}) into {report['path']} "
    f"(visage-train --config.data.dir={FLAGS.output})"
  )


def _no_tfds_progress_bars() -> None:
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()


def run():
  run_app(main, "visage-prepare")


if __name__ == "__main__":
  run()
