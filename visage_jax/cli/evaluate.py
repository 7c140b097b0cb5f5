"""`visage-eval`: score a converted (or trained) checkpoint on a challenge-layout dataset.

    visage-eval --checkpoint=DIR --data=ROOT --split=public_test --output=OUT [--save_maps]

Every frame of every video is predicted once (the original's interleaved windows) and scored at
the ground truth's resolution with the challenge's pipeline, for Expert 1, Expert 2 and the fused
map, in both metric variants. Writes OUT/metrics.json and prints the headline table; with
--save_maps also OUT/predictions/<video>/eyeMap_%05d.png (8-bit fused maps at the video's
resolution) and OUT/predictions/<video>.mp4, as a submission expects them, written while the
model runs. Batches are split over every local device; with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set (as for visage-train) the processes share the videos and
process 0 writes metrics.json. The numbers do not depend on the number of devices or processes.
"""

from __future__ import annotations

import os

from absl import flags

from visage_jax.cli import check_output, fail, run_app

flags.DEFINE_string("checkpoint", None, "A visage-convert output (or a trained checkpoint)")
flags.DEFINE_string("data", None, "Dataset root in the challenge layout")
flags.DEFINE_string("split", "public_test", "train, public_test or private_test")
flags.DEFINE_string("output", None, "Output directory")
flags.DEFINE_bool("save_maps", False, "Also write the fused maps as a submission")
flags.DEFINE_integer("batch_size", 2, "Windows per step on each device")
flags.DEFINE_integer("stride", 0, "Source frames per model frame (0: round(fps / 5))")
flags.DEFINE_string("dtype", None, "Override the backbone's activation dtype (e.g. bfloat16)")
flags.DEFINE_bool("quantize_uint8", True, "Score the maps as 8-bit images, as a submission is")
flags.DEFINE_integer("max_videos", 0, "Evaluate only the first N videos (0: all)")
FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from visage_jax import evaluate, parallel
  from visage_jax.checkpoint import CheckpointError
  from visage_jax.data.challenge import DataError
  from visage_jax.data.video import VideoError
  from visage_jax.evaluate import evaluate_dataset

  logging.set_verbosity(logging.WARNING)
  for name in ("checkpoint", "data", "output"):
    if not getattr(FLAGS, name):
      fail("visage-eval", f"--{name} is required")
  if FLAGS.batch_size < 1 or FLAGS.stride < 0:
    fail("visage-eval", "--batch_size must be ≥ 1 and --stride ≥ 0")
  check_output("visage-eval", FLAGS.output)
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
      save_maps=FLAGS.save_maps,
      batch_size=FLAGS.batch_size,
      stride=FLAGS.stride,
      dtype=FLAGS.dtype,
      quantize_uint8=FLAGS.quantize_uint8,
      max_videos=FLAGS.max_videos,
    )
  except (DataError, VideoError, CheckpointError) as e:
    fail("visage-eval", str(e))
  import jax

  if jax.process_index():
    return
  print(evaluate.format_table(result, "ntire2026"))
  print()
  print(evaluate.format_table(result, "mit"))
  print(f"\nwrote {os.path.join(FLAGS.output, 'metrics.json')}")


def run():
  run_app(main)


if __name__ == "__main__":
  run()
