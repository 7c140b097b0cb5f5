"""`visage-check-submission`: check predictions before anyone uploads them.

    visage-check-submission --predictions=DIR --videos=ROOT [--split=public_test]

ROOT is a challenge-layout dataset (its TrainTestSplit.json names the videos of --split) or a
folder of video files (those visage-predict finds there: mp4, avi, mkv, ...). For every video,
DIR must hold `<name>/eyeMap_%05d.png` (1-based, one per frame, 8-bit, readable, the video's
width × height) and/or `<name>.mp4` with the video's frame count. Every problem is printed
naming the video and the frame, on stdout.

Exit codes: 0 the submission is fine, 1 it has problems (listed on stdout), 2 a usage mistake
(one line on stderr: a missing flag, a --predictions or --videos that is not a folder).
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
  from visage_jax.inference.predict import find_videos, video_name

  folder = os.path.join(root, "Videos") if os.path.isdir(os.path.join(root, "Videos")) else root
  return {video_name(p): p for p in find_videos([folder]) if os.path.isfile(p)}


def check(predictions: str, videos: dict[str, str]) -> tuple[list[str], int]:
  """(problems, number of videos that passed) of a predictions folder (`main` has checked that
  it is one)."""
  problems: list[str] = []
  ok = 0
  for name, src in sorted(videos.items()):
    found = _video_problems(predictions, name, src)
    problems += found
    ok += not found
  return problems + _strays(predictions, videos), ok


def _video_problems(predictions: str, name: str, src: str) -> list[str]:
  """What is wrong with one video's maps (its folder of PNGs, its mp4, or both)."""
  from visage_jax.data.video import VideoError, open_video

  try:
    source = open_video(src)
    n, size = source.num_frames, (source.width, source.height)
  except VideoError as e:
    return [f"{name}: cannot read the source video to count its frames: {e}"]
  folder = os.path.join(predictions, name)
  mp4 = os.path.join(predictions, name + ".mp4")
  if not os.path.isdir(folder) and not os.path.isfile(mp4):
    return [f"{name}: no predictions (neither {name}/ nor {name}.mp4)"]
  problems = _folder_problems(name, folder, n, size) if os.path.isdir(folder) else []
  if os.path.isfile(mp4):
    try:
      m = open_video(mp4).num_frames
      if m != n:
        problems.append(f"{name}: {name}.mp4 has {m} frames, the video has {n}")
    except VideoError as e:
      problems.append(f"{name}: {name}.mp4 is not readable: {e}")
  return problems


def _folder_problems(name: str, folder: str, n: int, size: tuple[int, int]) -> list[str]:
  """A folder of maps: one 8-bit PNG of the video's `size` (W, H) for each of its `n` frames."""
  problems = []
  files = set(os.listdir(folder))
  numbered = {int(m.group(1)) for f in files if (m := _MAP.match(f))}
  missing = [i for i in range(1, n + 1) if i not in numbered]
  if missing:
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    problems.append(f"{name}: missing frame {missing[0]} (eyeMap_{missing[0]:05d}.png){more}")
  extra = sorted(f for f in files if not _MAP.match(f) or int(_MAP.match(f).group(1)) > n)
  if extra:
    problems.append(f"{name}: unexpected files beyond its {n} frames: {', '.join(extra[:3])}")
  for i in sorted(k for k in numbered if k <= n):
    path = os.path.join(folder, f"eyeMap_{i:05d}.png")
    found, stop = _map_problems(path, size)
    problems += [f"{name}: frame {i} ({path}) {problem}" for problem in found]
    if stop:
      break
  return problems


def _map_problems(path: str, size: tuple[int, int]) -> tuple[list[str], bool]:
  """What is wrong with one map, and whether to stop at it: a wrong size or an unreadable file
  is said once a video (its other maps are almost always the same)."""
  from PIL import Image

  try:
    with Image.open(path) as img:
      img.load()
      mode, got = img.mode, img.size
  except Exception as e:  # PIL raises many kinds
    return [f"is not a readable PNG: {e}"], True
  found = [] if mode in ("L", "RGB", "RGBA", "P") else [f"is {mode}, not an 8-bit image"]
  if got != size:
    return [*found, f"is {got[0]}×{got[1]}, the video is {size[0]}×{size[1]}"], True
  return found, False


def _strays(predictions: str, videos) -> list[str]:
  """Entries of the predictions folder that belong to no video of the split (besides what
  visage-eval and visage-predict write beside the maps, and hidden ones)."""
  auxiliary = {"overlays", "experts", "metrics.json"}
  return [
    f"{entry}: not a video of this split (would be ignored or rejected)"
    for entry in sorted(os.listdir(predictions))
    if (entry[:-4] if entry.endswith(".mp4") else entry) not in videos
    and not entry.startswith(".")
    and entry not in auxiliary
  ]


def main(_):
  from visage_jax.data.challenge import DataError

  if not FLAGS.predictions or not FLAGS.videos:
    fail("visage-check-submission", "--predictions and --videos are required")
  for flag in ("predictions", "videos"):  # usage mistakes, not problems of a submission
    path = FLAGS[flag].value
    if not os.path.isdir(path):
      what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
      fail("visage-check-submission", f"--{flag}={path} {what}")
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
