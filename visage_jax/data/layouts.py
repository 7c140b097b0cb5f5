"""The dataset layouts `visage-prepare`, `visage-eval` and `visage-synth` read, as distributed.

- `ntire2026`: the challenge's (`challenge.ChallengeLayout`, METRICS.md).
- `dhf1k`: `video/NNN.AVI`; `annotation/NNNN/maps/*.png` (continuous maps) and
  `annotation/NNNN/fixation/*.png` (binary fixation maps), one per frame; videos 1–600 are
  `train`, 601–700 `validation` (701–1000, the test set, come without annotations).
- `hollywood2`, `ucf_sports`: `training/<clip>/` and `testing/<clip>/` (splits `train`, `test`),
  each with `images/`, `maps/` and `fixation/` folders of numbered frames, as the field's
  loaders (ACLNet, ViNet, TMFI-Net) read them. Frame folders carry no frame rate: give it.

Every layout lists `names(split)` and gives `entry(name, split)`, a `challenge.VideoEntry` whose
paths are files or folders; `open_entry` reads one the same way whatever the layout. Problems
are `DataError`s (or `VideoError`s) naming the file.
"""

from __future__ import annotations

import os
import re
import zlib

import numpy as np

from visage_jax.data import challenge
from visage_jax.data.challenge import DataError, VideoEntry
from visage_jax.data.video import VideoError, numbered_images, open_video

LAYOUTS = ("ntire2026", "dhf1k", "hollywood2", "ucf_sports")
EVAL_SPLIT = {
  "ntire2026": "public_test",
  "dhf1k": "validation",
  "hollywood2": "test",
  "ucf_sports": "test",
}
DHF1K_SPLITS = {"train": range(1, 601), "validation": range(601, 701)}
CLIP_SPLITS = {"train": "training", "test": "testing"}  # split → folder (Hollywood-2, UCF-Sports)


class Dhf1kLayout(challenge.Layout):
  """DHF1K as distributed."""

  name = "dhf1k"

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    folder = os.path.join(self.root, "video")
    if not os.path.isdir(folder):
      raise DataError(f"{folder}: missing (not a DHF1K-layout dataset?)")
    self.videos = {}
    for f in os.listdir(folder):
      m = re.match(r"^(\d+)\.avi$", f, re.IGNORECASE)
      if m:
        self.videos[int(m.group(1))] = os.path.join(folder, f)
    if not self.videos:
      raise DataError(f"{folder}: no NNN.AVI videos (not a DHF1K-layout dataset?)")

  def names(self, split: str) -> list[str]:
    if split not in DHF1K_SPLITS:
      raise DataError(f"unknown DHF1K split {split!r}; it has {tuple(DHF1K_SPLITS)}")
    return [f"{k:03d}" for k in DHF1K_SPLITS[split] if k in self.videos]

  def entry(self, name: str, split: str, *, require_gt: bool = True) -> VideoEntry:
    ann = os.path.join(self.root, "annotation", f"{int(name):04d}")
    return _folder_entry(
      name, split, self.videos[int(name)], ann, ("maps", "fixation"), require_gt=require_gt
    )


class ClipFoldersLayout(challenge.Layout):
  """Hollywood-2 or UCF-Sports as the field distributes them: a folder per clip."""

  def __init__(self, root: str, name: str):
    self.root, self.name = os.path.abspath(root), name
    if not any(os.path.isdir(os.path.join(self.root, d)) for d in CLIP_SPLITS.values()):
      raise DataError(f"{self.root}: neither training/ nor testing/ (not a {name}-layout dataset?)")

  def _split_dir(self, split: str) -> str:
    if split not in CLIP_SPLITS:
      raise DataError(f"unknown {self.name} split {split!r}; it has {tuple(CLIP_SPLITS)}")
    return os.path.join(self.root, CLIP_SPLITS[split])

  def names(self, split: str) -> list[str]:
    folder = self._split_dir(split)
    if not os.path.isdir(folder):
      return []
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))

  def entry(self, name: str, split: str, *, require_gt: bool = True) -> VideoEntry:
    clip = os.path.join(self._split_dir(split), name)
    images = os.path.join(clip, "images")
    if not os.path.isdir(images):
      raise DataError(f"{images}: missing (each clip holds images/, maps/ and fixation/)")
    return _folder_entry(name, split, images, clip, ("maps", "fixation"), require_gt=require_gt)


def _folder_entry(name, split, video, annotation, subdirs, *, require_gt) -> VideoEntry:
  maps, fixation = (os.path.join(annotation, d) for d in subdirs)
  has = os.path.isdir(maps), os.path.isdir(fixation)
  if require_gt and not all(has):
    raise DataError(f"{maps if not has[0] else fixation}: ground truth for {name} is missing")
  return VideoEntry(name, split, video, maps if has[0] else None, fixation if has[1] else None)


FRAME_FOLDER_LAYOUTS = ("hollywood2", "ucf_sports")


def check_frame_rate(layout: str, source_fps: float | None) -> None:
  """Frame-folder layouts need the frame rate given (before any work starts)."""
  if layout in FRAME_FOLDER_LAYOUTS and not source_fps:
    raise DataError(
      f"--layout={layout}: its videos are folders of frames with no frame rate; give it with "
      "--source_fps"
    )


def eval_entries(layout: str, root: str, split: str | None, max_videos: int = 0) -> list:
  """The entries `visage-eval` scores: `split` (None: the layout's evaluation split), the first
  `max_videos` of it (0: all); a split that lists none is a `DataError`."""
  dataset = open_layout(layout, root)
  split = split or EVAL_SPLIT.get(layout)
  entries = dataset.entries(split)[: max_videos or None]
  if not entries:
    raise DataError(f"{dataset.root}: split {split!r} lists no videos")
  return entries


def check_protocol_settings(layout: str, quantize_uint8: bool, source_fps) -> None:
  """What the DHF1K protocol (every layout but ntire2026) needs from the settings."""
  if layout == "ntire2026":
    return
  if not quantize_uint8:
    raise DataError(
      f"--layout={layout} scores 8-bit maps (the DHF1K protocol, as its MATLAB code reads PNGs): "
      "drop --noquantize_uint8"
    )
  check_frame_rate(layout, source_fps)


def open_layout(layout: str, root: str):
  """The layout object for a dataset root."""
  if layout == "ntire2026":
    return challenge.ChallengeLayout(root)
  if layout == "dhf1k":
    return Dhf1kLayout(root)
  if layout in FRAME_FOLDER_LAYOUTS:
    return ClipFoldersLayout(root, layout)
  raise DataError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")


def open_entry(
  entry: VideoEntry,
  *,
  source_fps: float | None = None,
  points: bool = True,
  timeout_s: float = 60.0,
):
  """(video reader, saliency-map reader or None, per-frame [y, x] fixations or None) of one
  entry, with frame counts (and, for annotation folders, frame sizes) checked. `source_fps` is
  the frame rate of a video given as a folder of frames; `points=False` skips the fixations."""
  video = open_video(entry.video, fps=source_fps, timeout_s=timeout_s)
  sal = None
  if entry.saliency:
    sal = open_video(entry.saliency, fps=video.fps, timeout_s=timeout_s)
    if sal.num_frames != video.num_frames:
      raise DataError(
        f"{entry.saliency}: {sal.num_frames} frames, but {entry.video} has {video.num_frames}"
      )
    if os.path.isdir(entry.saliency) and (sal.height, sal.width) != (video.height, video.width):
      raise DataError(
        f"{entry.saliency}: maps of {sal.width}×{sal.height} (width × height), the video is "
        f"{video.width}×{video.height}"
      )
  per_frame = load_points(entry.fixations, video) if entry.fixations and points else None
  return video, sal, per_frame


def load_points(path: str, video) -> list[np.ndarray]:
  """Per frame, int32 (N, 2) [y, x]: from fixations.json (events) or a folder of binary
  fixation maps (each non-zero pixel once)."""
  if not os.path.isdir(path):
    return challenge.load_fixations(path, video.num_frames, video.height, video.width)
  from PIL import Image, ImageOps

  files = numbered_images(path)
  if len(files) != video.num_frames:
    raise DataError(f"{path}: {len(files)} fixation maps, but {video.path} has {video.num_frames}")
  out = []
  for f in files:
    try:
      with Image.open(f) as img:
        binary = np.asarray(ImageOps.exif_transpose(img).convert("L"))  # as shown
    except Exception as e:
      raise DataError(f"{f}: cannot read the fixation map: {e}") from None
    if binary.shape != (video.height, video.width):
      raise DataError(
        f"{f}: {binary.shape[1]}×{binary.shape[0]} (width × height), the video is "
        f"{video.width}×{video.height}"
      )
    out.append(np.argwhere(binary > 0).astype(np.int32))
  return out


class ShuffledNegatives:
  """The negatives of Borji's shuffled AUC as the DHF1K protocol takes them: for frame i of
  video v, the union of the fixations of `m` frames of other videos (each drawn as a video
  uniformly among the others, without replacement while there are enough, then one of its frames
  uniformly), from a generator seeded by (seed, v, i): the same whatever the batching, the
  devices or the processes. Fixations are scaled to the asking frame's size.

  `points`: {video: (per-frame [y, x] arrays, (H, W))} of every video of the evaluated split.
  """

  def __init__(self, points: dict, *, m: int = 10, seed: int = 0):
    self.points, self.m, self.seed = points, m, seed
    self.videos = sorted(points)

  def __call__(self, video: str, index: int, hw: tuple[int, int]) -> np.ndarray:
    others = [v for v in self.videos if v != video]
    if not others:
      return np.zeros((0, 2), np.int32)
    rng = np.random.default_rng([self.seed, zlib.crc32(video.encode()), int(index)])
    picks = rng.choice(len(others), self.m, replace=len(others) < self.m)
    drawn = []
    for p in picks:
      frames, (h, w) = self.points[others[p]]
      yx = np.asarray(frames[int(rng.integers(len(frames)))], np.int64).reshape(-1, 2)
      drawn.append(np.stack([yx[:, 0] * hw[0] // h, yx[:, 1] * hw[1] // w], axis=1))
    return np.unique(np.concatenate(drawn), axis=0).astype(np.int32)


__all__ = [
  "DataError",
  "EVAL_SPLIT",
  "LAYOUTS",
  "ShuffledNegatives",
  "VideoError",
  "check_frame_rate",
  "check_protocol_settings",
  "eval_entries",
  "load_points",
  "open_entry",
  "open_layout",
]
