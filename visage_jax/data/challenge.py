"""The NTIRE 2026 challenge layout (METRICS.md), read as distributed: mp4 videos, saliency-map
videos, fixations.json, TrainTestSplit.json. Every problem is a `DataError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from visage_jax.data.video import VideoError

SPLITS = ("train", "public_test", "private_test")


class DataError(Exception):
  """A dataset file is missing or inconsistent. The message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  name: str  # without .mp4
  split: str
  video: str
  saliency: str | None  # None where the split ships no ground truth
  fixations: str | None


class Layout:
  """A dataset layout: its `names(split)` and each one's `entry(name, split)`, a `VideoEntry`."""

  def entries(self, split: str, *, require_gt: bool = True) -> list[VideoEntry]:
    return [self.entry(n, split, require_gt=require_gt) for n in self.names(split)]


class ChallengeLayout(Layout):
  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self.split_file = os.path.join(self.root, "TrainTestSplit.json")
    if not os.path.isfile(self.split_file):
      raise DataError(f"{self.split_file}: missing (not a challenge-layout dataset?)")
    try:
      with open(self.split_file) as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"{self.split_file}: not valid JSON: {e}") from None
    # The original also accepts "public test" spelled with a space.
    self.splits = {s: list(raw.get(s, raw.get(s.replace("_", " "), []))) for s in SPLITS}

  def names(self, split: str) -> list[str]:
    if split not in SPLITS:
      raise DataError(f"unknown split {split!r}; the challenge has {SPLITS}")
    return [item[:-4] if item.endswith(".mp4") else item for item in self.splits[split]]

  def entry(self, name: str, split: str, *, require_gt: bool = True) -> VideoEntry:
    """One video's files, checked to exist."""
    if split == "train":
      sub = ("SaliencyTrain/Train", "FixationsTrain/Train")
    else:
      sub = ("SaliencyTest/Test", "FixationsTest/Test")
    video = os.path.join(self.root, "Videos", name + ".mp4")
    if not os.path.isfile(video):
      raise DataError(f"{video}: listed in {self.split_file} ({split}) but missing")
    sal = os.path.join(self.root, sub[0], name + ".mp4")
    fix = os.path.join(self.root, sub[1], name, "fixations.json")
    has = os.path.isfile(sal), os.path.isfile(fix)
    if require_gt and not all(has):
      missing = sal if not has[0] else fix
      raise DataError(f"{missing}: ground truth for {name} ({split}) is missing")
    return VideoEntry(name, split, video, sal if has[0] else None, fix if has[1] else None)


def load_fixations(path: str, num_frames: int, height: int, width: int) -> list[np.ndarray]:
  """fixations.json → one int32 (N, 2) array of [y, x] per frame, checked against the video."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: missing") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(raw, list):
    raise DataError(f"{path}: expected a list with one entry per frame, got {type(raw).__name__}")
  if len(raw) != num_frames:
    raise DataError(f"{path}: {len(raw)} frame entries, but the video has {num_frames} frames")
  out = []
  for i, pts in enumerate(raw):
    a = np.asarray(pts, dtype=np.int64).reshape(-1, 2) if len(pts) else np.zeros((0, 2), np.int64)
    bad = (a[:, 0] < 0) | (a[:, 0] >= height) | (a[:, 1] < 0) | (a[:, 1] >= width)
    if bad.any():
      y, x = a[bad][0]
      raise DataError(
        f"{path}: frame {i}: fixation [y={y}, x={x}] outside the {height}×{width} frame"
      )
    out.append(a.astype(np.int32))
  return out


def fixation_counts(points: list[np.ndarray], frames, height: int, width: int) -> np.ndarray:
  """(T, H, W) int32 event counts at source resolution for the chosen frame indices."""
  out = np.zeros((len(frames), height, width), np.int32)
  for t, i in enumerate(frames):
    p = points[int(i)]
    np.add.at(out[t], (p[:, 0], p[:, 1]), 1)
  return out


def model_fixation_events(points: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
  """[y, x] at source resolution → model-size pixels, as the original maps them:
  (int(y·size/H), int(x·size/W)), out-of-range dropped."""
  p = np.asarray(points, np.int64).reshape(-1, 2)
  y = (p[:, 0] * size / height).astype(np.int64)  # int() of a non-negative float truncates
  x = (p[:, 1] * size / width).astype(np.int64)
  keep = (y >= 0) & (y < size) & (x >= 0) & (x < size)
  return np.stack([y[keep], x[keep]], axis=1).astype(np.int32)


def model_fixation_map(events: np.ndarray, size: int) -> np.ndarray:
  """(size, size) float32: counts at the model-size events, then a 3×3 max filter (ARCH §8)."""
  m = np.zeros((size + 2, size + 2), np.float32)
  if len(events):
    np.add.at(m, (events[:, 0] + 1, events[:, 1] + 1), 1.0)
  # max over the 3×3 neighbourhood (zero padding equals -inf padding: counts are ≥ 0)
  shifted = [m[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)]
  return np.max(shifted, axis=0)


__all__ = [
  "ChallengeLayout",
  "DataError",
  "VideoEntry",
  "VideoError",
  "fixation_counts",
  "load_fixations",
  "model_fixation_events",
  "model_fixation_map",
]
