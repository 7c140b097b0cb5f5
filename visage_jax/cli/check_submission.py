"""`visage-check-submission`: check predictions before anyone uploads them.

    visage-check-submission --predictions=DIR --videos=ROOT [--split=public_test]

ROOT is a challenge-layout dataset (its TrainTestSplit.json names the videos of --split) or a
folder of video files (those visage-predict finds there: mp4, avi, mkv, ...). For every video,
DIR must hold `<name>/eyeMap_%05d.png` (1-based, one per frame, 8-bit, readable, the video's
width × height) and/or `<name>.mp4` with the video's frame count. Every problem is printed
naming the video and the frame; the exit code is 1 if there was any.
"""

from __future__ import annotations

import os
import re
import sys

from absl import flags

from visage_jax.cli import fail, run_app

flags.DEFINE_string("predictions", None, "Folder with the predictions")
flags.DEFINE_string("videos", None, "Dataset root (challenge layout) or a folder of videos")
flags.DEFINE_string("split", "public_test", "Split to check when --videos is a dataset root")
FLAGS = flags.FLAGS

_MAP = re.compile(r"^eyeMap_(\d{5})\.png$")


def expected_videos(root: str, split: str) -> dict[str, str]:
  """{name: path of the source video}."""
  from visage_jax.data.challenge import ChallengeLayout

  if os.path.isfile(os.path.join(root, "TrainTestSplit.json")):
    return {e.name: e.video for e in ChallengeLayout(root).entries(split, require_gt=False)}
  from visage_jax.predict import find_videos, video_name

  folder = os.path.join(root, "Videos") if os.path.isdir(os.path.join(root, "Videos")) else root
  return {video_name(p): p for p in find_videos([folder]) if os.path.isfile(p)}


def check(predictions: str, videos: dict[str, str]) -> tuple[list[str], int]:
  """(problems, number of videos that passed)."""
  from PIL import Image

  from visage_jax.data.video import VideoError, open_video

  problems: list[str] = []
  ok = 0
  if not os.path.isdir(predictions):
    what = "not a folder" if os.path.exists(predictions) else "no such folder"
    return [f"{predictions}: {what}"], 0
  for name, src in sorted(videos.items()):
    before = len(problems)
    try:
      source = open_video(src)
      n, size = source.num_frames, (source.width, source.height)
    except VideoError as e:
      problems.append(f"{name}: cannot read the source video to count its frames: {e}")
      continue
    folder = os.path.join(predictions, name)
    mp4 = os.path.join(predictions, name + ".mp4")
    if not os.path.isdir(folder) and not os.path.isfile(mp4):
      problems.append(f"{name}: no predictions (neither {name}/ nor {name}.mp4)")
      continue
    if os.path.isdir(folder):
      files = set(os.listdir(folder))
      numbered = {int(m.group(1)) for f in files if (m := _MAP.match(f))}
      missing = [i for i in range(1, n + 1) if i not in numbered]
      if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        problems.append(f"{name}: missing frame {missing[0]} (eyeMap_{missing[0]:05d}.png){more}")
      extra = sorted(f for f in files if not _MAP.match(f) or int(_MAP.match(f).group(1)) > n)
      if extra:
        problems.append(f"{name}: unexpected files beyond its {n} frames: {', '.join(extra[:3])}")
      for i in sorted(numbered):
        if i > n:
          continue
        path = os.path.join(folder, f"eyeMap_{i:05d}.png")
        try:
          with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "RGB", "RGBA", "P"):
              problems.append(f"{name}: frame {i} ({path}) is {img.mode}, not an 8-bit image")
            if img.size != size:
              problems.append(
                f"{name}: frame {i} ({path}) is {img.size[0]}×{img.size[1]}, the video is "
                f"{size[0]}×{size[1]}"
              )
              break  # one line a video: the others are almost always the same size
        except Exception as e:  # PIL raises many kinds
          problems.append(f"{name}: frame {i} ({path}) is not a readable PNG: {e}")
          break
    if os.path.isfile(mp4):
      try:
        m = open_video(mp4).num_frames
        if m != n:
          problems.append(f"{name}: {name}.mp4 has {m} frames, the video has {n}")
      except VideoError as e:
        problems.append(f"{name}: {name}.mp4 is not readable: {e}")
    ok += len(problems) == before
  known = set(videos)
  # what visage-eval and visage-predict write beside the maps
  auxiliary = {"overlays", "experts", "metrics.json"}
  for entry in sorted(os.listdir(predictions)):
    stem = entry[:-4] if entry.endswith(".mp4") else entry
    if stem not in known and not entry.startswith(".") and entry not in auxiliary:
      problems.append(f"{entry}: not a video of this split (would be ignored or rejected)")
  return problems, ok


def main(_):
  from visage_jax.data.challenge import DataError

  if not FLAGS.predictions or not FLAGS.videos:
    fail("visage-check-submission", "--predictions and --videos are required")
  try:
    videos = expected_videos(FLAGS.videos, FLAGS.split)
  except DataError as e:
    fail("visage-check-submission", str(e))
  if not videos:
    fail("visage-check-submission", f"no videos found under {FLAGS.videos}")
  problems, ok = check(FLAGS.predictions, videos)
  for p in problems:
    print(p)
  print(f"{ok}/{len(videos)} videos OK" + ("" if not problems else f"; {len(problems)} problem(s)"))
  sys.exit(1 if problems else 0)


def run():
  run_app(main, "visage-check-submission")


if __name__ == "__main__":
  run()
