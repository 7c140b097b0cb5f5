"""`visage-predict`: saliency maps for any video.

    visage-predict --checkpoint=DIR --input=VIDEO_OR_FOLDER [--input=...] --output=OUT
        [--map_size=source|model] [--save_experts] [--batch_size=1] [--dtype=bfloat16]

For each video: OUT/<video>/eyeMap_%05d.png (8-bit fused maps, one per frame,
1-based), OUT/<video>.mp4 (the maps at the source frame rate and frame count) and
OUT/overlays/<video>.mp4 (the map as a heat map over the frames); with --save_experts also
OUT/experts/<expert>/<video>/. Videos already complete are skipped, so rerunning an interrupted
command finishes the job. A video that cannot be read is reported and skipped; the exit code is 1
if any failed.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from visage_jax.cli import fail

flags.DEFINE_string("checkpoint", None, "A visage-convert output (or a trained checkpoint)")
flags.DEFINE_multi_string("input", None, "Video file or folder of videos (repeatable)")
flags.DEFINE_string("output", None, "Output directory")
flags.DEFINE_enum(
  "map_size", "source", ["source", "model"], "Write maps at the video's size or 224"
)
flags.DEFINE_bool("save_experts", False, "Also write each expert's maps")
flags.DEFINE_integer("batch_size", 1, "Windows per step")
flags.DEFINE_string("dtype", None, "Override the backbone's activation dtype (e.g. bfloat16)")
FLAGS = flags.FLAGS


def main(_):
  from absl import logging
  from tqdm import tqdm

  from visage_jax.checkpoint import CheckpointError
  from visage_jax.data.challenge import DataError
  from visage_jax.data.video import VideoError
  from visage_jax.inference import Predictor
  from visage_jax.predict import find_videos, is_complete, video_name, write_video_outputs

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.checkpoint or not FLAGS.input or not FLAGS.output:
    fail("visage-predict", "--checkpoint, --input and --output are required")
  videos = find_videos(FLAGS.input)
  if not videos:
    fail("visage-predict", f"no videos in {FLAGS.input}")
  names = [video_name(v) for v in videos]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    fail("visage-predict", f"several inputs are named {dupes[0]}")
  try:
    predictor = Predictor.load(FLAGS.checkpoint, **({"dtype": FLAGS.dtype} if FLAGS.dtype else {}))
  except CheckpointError as e:
    fail("visage-predict", str(e))
  os.makedirs(FLAGS.output, exist_ok=True)
  failed, done, skipped = [], 0, 0
  overall = tqdm(videos, desc="videos", unit="video", position=0)
  for path in overall:
    name = video_name(path)
    if is_complete(FLAGS.output, name):
      skipped += 1
      continue
    bar = tqdm(desc=name, unit="frame", position=1, leave=False)
    try:
      write_video_outputs(
        predictor,
        path,
        FLAGS.output,
        map_size=FLAGS.map_size,
        save_experts=FLAGS.save_experts,
        batch_size=FLAGS.batch_size,
        progress=bar.update,
      )
      done += 1
    except (VideoError, DataError) as e:
      failed.append((path, str(e)))
      tqdm.write(f"visage-predict: skipped {path}: {e}", file=sys.stderr)
    finally:
      bar.close()
  overall.close()
  print(f"{done} predicted, {skipped} already complete, {len(failed)} failed -> {FLAGS.output}")
  for path, err in failed:
    print(f"failed: {path}: {err}", file=sys.stderr)
  sys.exit(1 if failed else 0)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
