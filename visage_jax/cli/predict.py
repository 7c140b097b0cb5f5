"""`visage-predict`: saliency maps for any video.

    visage-predict --checkpoint=DIR --input=VIDEO_OR_FOLDER [--input=...] --output=OUT
        [--outputs=pngs,video,overlay] [--map_size=source|model] [--save_experts]
        [--batch_size=1] [--stride=0] [--source_fps=25] [--dtype=bfloat16] [--overwrite]

An input folder that holds numbered images (frame_0001.png, …) is one video, its frames
(--source_fps gives its frame rate; a folder called images/ takes its parent's name); any other
folder is searched for video files and for subfolders of numbered images (in the subfolder or in
its images/ or frames/); other subfolders are named on stderr, not searched.

For each video, as --outputs chooses (all three by default): OUT/<video>/eyeMap_%05d.png (pngs:
8-bit fused maps, one per frame, 1-based), OUT/<video>.mp4 (video: the maps at the source frame
rate and frame count) and OUT/overlays/<video>.mp4 (overlay: the map as a heat map over the
frames); with --save_experts also OUT/experts/<expert>/<video>/ (pngs).
OUT must lie apart from the inputs and the checkpoint (not one of them, not holding one, not
inside one), and a file or folder at one of a video's output names that visage-predict did not
write (no record of it in OUT/.visage-predict/) is refused before any work, never replaced.
Outputs are written while the model runs, each video into OUT/.visage-predict/<video>.partial/,
moved into place when whole. Each finished video records its settings (the checkpoint and when it
was written, --dtype, --stride, --source_fps, --map_size, --save_experts, --outputs) in
OUT/.visage-predict/<video>.json: a rerun skips videos made with the same settings (so an
interrupted command finishes the job) and refuses, naming them, videos made with other settings
unless --overwrite. A video that cannot be read is reported and skipped; the exit code is 1 if any
failed. Batches are split over every local device; with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID set (as for visage-train) the processes share the videos.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from visage_jax.cli import check_apart, check_output, fail, must_be_positive, run_app
from visage_jax.inference.predict import OUTPUTS, outputs_problem

flags.DEFINE_string("checkpoint", None, "A visage-convert output (or a trained checkpoint)")
flags.DEFINE_multi_string(
  "input", None, "Video file, folder of numbered frames, or folder of videos (repeatable)"
)
flags.DEFINE_string("output", None, "Output directory")
flags.DEFINE_list(
  "outputs", list(OUTPUTS), "What to write of each video, comma-separated: pngs, video, overlay"
)
flags.DEFINE_enum(
  "map_size",
  "source",
  ["source", "model"],
  "Write maps at the video's size or the model's output size",
)
flags.DEFINE_bool("save_experts", False, "Also write each expert's maps")
flags.DEFINE_integer("batch_size", 1, "Windows per step on each device", lower_bound=1)
flags.DEFINE_integer(
  "stride", 0, "Source frames per model frame (0: round(fps / 5))", lower_bound=0
)
flags.DEFINE_float("source_fps", None, "Frame rate of inputs that are folders of frames")
must_be_positive("source_fps")
flags.DEFINE_enum(
  "dtype", None, ["float32", "bfloat16"], "Override the backbone's activation dtype"
)
flags.DEFINE_bool("overwrite", False, "Recompute finished videos made with other settings")
FLAGS = flags.FLAGS


@flags.multi_flags_validator(["outputs", "save_experts"])
def _outputs_chosen(values) -> bool:
  problem = outputs_problem(values["outputs"], values["save_experts"])
  if problem:
    raise flags.ValidationError(problem)
  return True


def videos_to_do(videos, settings) -> tuple[list[str], int]:
  """(videos to predict, number already complete with these settings); refuses (exit 2) to
  recompute videos made with other settings unless --overwrite."""
  from visage_jax.inference.predict import is_complete, recorded_settings, video_name
  from visage_jax.runtime.rerun import SettingsConflict, rerun_plan

  by_name = {video_name(path): path for path in videos}
  try:
    todo, complete, differing = rerun_plan(
      by_name,
      settings,
      finished=lambda name: is_complete(FLAGS.output, name),
      recorded=lambda name: recorded_settings(FLAGS.output, name),
      overwrite=FLAGS.overwrite,
      where=FLAGS.output,
    )
  except SettingsConflict as e:
    fail("visage-predict", str(e))
  for d in differing:
    print(f"visage-predict: recomputing {d}", file=sys.stderr)
  return [by_name[name] for name in todo], complete


def main(_):
  from absl import logging

  from visage_jax.inference.predict import SETTINGS_DIR, run_settings
  from visage_jax.runtime.config_file import CheckpointError, read_config

  logging.set_verbosity(logging.WARNING)
  if not FLAGS.checkpoint or not FLAGS.input or not FLAGS.output:
    fail("visage-predict", "--checkpoint, --input and --output are required")
  inputs = [("--input", path) for path in FLAGS.input] + [("--checkpoint", FLAGS.checkpoint)]
  check_apart("visage-predict", FLAGS.output, inputs)
  videos = _input_videos()
  check_output("visage-predict", FLAGS.output)
  _check_output_names_free(videos)
  try:  # read once, here: its weights are read once JAX is imported
    config = read_config(FLAGS.checkpoint)
  except CheckpointError as e:
    fail("visage-predict", str(e))
  settings = run_settings(
    FLAGS.checkpoint,
    map_size=FLAGS.map_size,
    save_experts=FLAGS.save_experts,
    stride=FLAGS.stride,
    source_fps=FLAGS.source_fps,
    dtype=FLAGS.dtype,
    outputs=FLAGS.outputs,
  )
  import jax  # after the checks above, which need none of it (a mistake is told at once)

  from visage_jax.inference import Predictor
  from visage_jax.runtime import parallel

  try:
    parallel.initialize_distributed()
  except ValueError as e:
    fail("visage-predict", str(e))
  # each process its share of the named videos, whatever is already done
  videos, skipped = videos_to_do(videos[jax.process_index() :: jax.process_count()], settings)
  try:
    overrides = {"dtype": FLAGS.dtype} if FLAGS.dtype else {}
    predictor = Predictor.load(FLAGS.checkpoint, config=config, **overrides)
  except CheckpointError as e:
    fail("visage-predict", str(e))
  done, failed = predict_each(predictor, videos, FLAGS.output, settings, FLAGS.batch_size)
  _remove_if_empty(os.path.join(FLAGS.output, SETTINGS_DIR))  # nothing finished: no records
  print(f"{done} predicted, {skipped} already complete, {len(failed)} failed -> {FLAGS.output}")
  for message in failed:
    print(f"failed: {message}", file=sys.stderr)
  sys.exit(1 if failed else 0)


def _remove_if_empty(folder: str) -> None:
  try:
    os.rmdir(folder)
  except OSError:  # not empty, or not there
    pass


def _input_videos() -> list[str]:
  """The videos that --input names, or one line and exit 2 for a mistake in them; the folders
  not searched are named on stderr."""
  from visage_jax.inference.predict import find_videos, folders_not_searched, video_name

  missing = [path for path in FLAGS.input if not os.path.exists(path)]
  if missing:
    fail("visage-predict", f"--input={missing[0]}: no such file or folder")
  videos = find_videos(FLAGS.input)
  for folder in folders_not_searched(FLAGS.input):  # the output lies apart (check_apart)
    print(f"visage-predict: not searched: {folder} (give it as an --input)", file=sys.stderr)
  if not videos:
    fail("visage-predict", f"no videos in {', '.join(FLAGS.input)}")
  folders = [v for v in videos if os.path.isdir(v)]
  if folders and not FLAGS.source_fps:
    fail("visage-predict", f"{folders[0]} is a folder of frames: give their rate (--source_fps)")
  names = [video_name(v) for v in videos]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    fail("visage-predict", f"several inputs are named {dupes[0]}")
  return videos


def _check_output_names_free(videos) -> None:
  """One line, exit 2, if a file or folder that visage-predict did not write lies at one of a
  video's output names (it is never replaced, --overwrite or not)."""
  from visage_jax.inference.predict import foreign_output, video_name

  for path in videos:
    taken = foreign_output(FLAGS.output, video_name(path))
    if taken:
      fail(
        "visage-predict",
        f"{taken} exists and was not written by visage-predict (an output name of {path}): "
        "move it or choose another --output",
      )


def predict_each(predictor, videos, output, settings, batch_size) -> tuple[int, list[str]]:
  """Each video's outputs, under a bar of the videos and one of the current video's frames; a
  video that fails is said and skipped, and the others go on: (videos done, the failures'
  messages). A failure that is not the video's (`VideoError`, `DataError`) is ours: its
  traceback is printed for a report."""
  import traceback

  from tqdm import tqdm

  from visage_jax.data.challenge import DataError
  from visage_jax.data.video import VideoError
  from visage_jax.inference.predict import video_name, write_video_outputs

  failed, done = [], 0
  for path in tqdm(videos, desc="videos", unit="video", position=0):
    with tqdm(desc=video_name(path), unit="frame", position=1, leave=False) as bar:
      try:
        write_video_outputs(
          predictor, path, output, settings=settings, batch_size=batch_size, progress=bar.update
        )
        done += 1
      except (VideoError, DataError) as e:
        failed.append(_naming(path, str(e)))
        tqdm.write(f"visage-predict: skipped {failed[-1]}", file=sys.stderr)
      except Exception as e:
        tqdm.write(traceback.format_exc(), file=sys.stderr)
        failed.append(
          _naming(path, f"{type(e).__name__}: {e} (a bug of visage-predict: please report it)")
        )
        tqdm.write(f"visage-predict: skipped {failed[-1]}", file=sys.stderr)
  return done, failed


def _naming(path: str, error: str) -> str:
  """The error with the video's path in front, once (most errors already begin with it)."""
  return error if error.startswith(path) else f"{path}: {error}"


def run():
  run_app(main, "visage-predict")


if __name__ == "__main__":
  run()
