"""`visage-eval`: score a converted (or trained) checkpoint on a dataset as distributed.

    visage-eval --checkpoint=DIR --data=ROOT --output=OUT [--layout=ntire2026] [--split=...]
        [--save_maps] [--source_fps=25] [--overwrite]

Every frame of every video is predicted once (the original's interleaved windows) and scored at
the ground truth's resolution with the challenge's pipeline, for Expert 1, Expert 2 and the fused
map, in both metric variants. The dhf1k, hollywood2 and ucf_sports layouts follow the DHF1K
protocol: the mit variant's AUC-J, SIM, s-AUC, CC, NSS over every annotated frame, pooled (and
per video), s-AUC's negatives the fixations of --sauc_frames frames of other videos drawn with
--sauc_seed (recorded in metrics.json). Writes OUT/metrics.json and prints the headline table; with
--save_maps also OUT/predictions/<video>/eyeMap_%05d.png (8-bit fused maps at the video's
resolution) and OUT/predictions/<video>.mp4, as a submission expects them, written while the
model runs. Each scored video's per-frame numbers are recorded with the settings that made them
(the checkpoint and when it was written, --dtype, --stride, --source_fps, --data, --layout,
--quantize_uint8, the s-AUC settings) in OUT/.visage-eval/<video>.npz: a rerun scores only the
videos not yet scored with these settings (so an interrupted run finishes the job), refuses to
score again videos scored with other settings unless --overwrite, and writes metrics.json from
every video's record. A video that cannot be read is skipped and named, the others are scored,
and the command ends with exit code 1 and no metrics.json. Batches are split over every local
device; with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set (as for
visage-train) the processes share the videos and process 0 writes metrics.json. The numbers do
not depend on the number of devices or processes.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from visage_jax.cli import check_apart, check_output, fail, must_be_positive, run_app

flags.DEFINE_string("checkpoint", None, "A visage-convert output (or a trained checkpoint)")
flags.DEFINE_string("data", None, "Dataset root, as distributed")
flags.DEFINE_enum(
  "layout", "ntire2026", ["ntire2026", "dhf1k", "hollywood2", "ucf_sports"], "Dataset layout"
)
flags.DEFINE_string(
  "split", None, "Split (default: public_test; dhf1k: validation; hollywood2, ucf_sports: test)"
)
flags.DEFINE_float("source_fps", None, "Frame rate of videos given as folders of frames")
must_be_positive("source_fps")
flags.DEFINE_integer(
  "sauc_frames", 10, "s-AUC negatives: frames of other videos (Borji's M)", lower_bound=1
)
flags.DEFINE_integer("sauc_seed", 0, "s-AUC negatives and splits: the seed")
flags.DEFINE_string("output", None, "Output directory")
flags.DEFINE_bool("save_maps", False, "Also write the fused maps as a submission")
flags.DEFINE_integer("batch_size", 2, "Windows per step on each device", lower_bound=1)
flags.DEFINE_integer(
  "stride", 0, "Source frames per model frame (0: round(fps / 5))", lower_bound=0
)
flags.DEFINE_enum(
  "dtype", None, ["float32", "bfloat16"], "Override the backbone's activation dtype"
)
flags.DEFINE_bool("quantize_uint8", True, "Score the maps as 8-bit images, as a submission is")
flags.DEFINE_integer("max_videos", 0, "Evaluate only the first N videos (0: all)", lower_bound=0)
flags.DEFINE_bool("overwrite", False, "Score again videos scored with other settings")
FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax.data.challenge import DataError
  from visage_jax.data.video import VideoError
  from visage_jax.runtime.config_file import CheckpointError

  logging.set_verbosity(logging.WARNING)
  for name in ("checkpoint", "data", "output"):
    if not getattr(FLAGS, name):
      fail("visage-eval", f"--{name} is required")
  inputs = [("--checkpoint", FLAGS.checkpoint), ("--data", FLAGS.data)]
  check_apart("visage-eval", FLAGS.output, inputs)
  check_output("visage-eval", FLAGS.output)
  try:
    _check_before_jax()
  except (DataError, VideoError, CheckpointError) as e:
    fail("visage-eval", str(e))

  from visage_jax.evaluation import evaluate
  from visage_jax.evaluation.evaluate import evaluate_dataset
  from visage_jax.runtime import parallel
  from visage_jax.runtime.rerun import SettingsConflict

  try:
    parallel.initialize_distributed()
  except ValueError as e:
    fail("visage-eval", str(e))
  try:
    result = evaluate_dataset(
      FLAGS.checkpoint,
      FLAGS.data,
      FLAGS.split,
      FLAGS.output,
      layout=FLAGS.layout,
      source_fps=FLAGS.source_fps,
      sauc_frames=FLAGS.sauc_frames,
      sauc_seed=FLAGS.sauc_seed,
      save_maps=FLAGS.save_maps,
      batch_size=FLAGS.batch_size,
      stride=FLAGS.stride,
      dtype=FLAGS.dtype,
      quantize_uint8=FLAGS.quantize_uint8,
      max_videos=FLAGS.max_videos,
      overwrite=FLAGS.overwrite,
    )
  except (DataError, VideoError, CheckpointError, SettingsConflict) as e:
    fail("visage-eval", str(e))
  except evaluate.VideosFailed as e:
    print(f"visage-eval: error: {e}", file=sys.stderr)
    sys.exit(1)
  import jax

  if jax.process_index():
    return
  tables = evaluate.TABLES["ntire2026" if FLAGS.layout == "ntire2026" else "dhf1k"]
  print("\n\n".join(evaluate.format_table(result, *table) for table in tables))
  print(f"\nwrote {os.path.join(FLAGS.output, 'metrics.json')}")


def _check_before_jax() -> None:
  """The checkpoint, the dataset's split and the protocol's settings, checked before the seconds
  JAX's import costs (`evaluate_dataset` checks them again, for API callers)."""
  from visage_jax.data import layouts
  from visage_jax.runtime.config_file import read_config

  read_config(FLAGS.checkpoint)
  layouts.eval_entries(FLAGS.layout, FLAGS.data, FLAGS.split, FLAGS.max_videos)
  layouts.check_protocol_settings(FLAGS.layout, FLAGS.quantize_uint8, FLAGS.source_fps)


def run():
  run_app(main, "visage-eval")


if __name__ == "__main__":
  run()
