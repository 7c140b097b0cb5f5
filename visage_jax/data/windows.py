"""Clip windows over a video's frames, as the original cuts them (docs/model.md §10).

A window is (indices, mask): `indices` has exactly `window` source-frame indices (the tail padded
by repeating the last real frame), `mask` is true on real frames. Inference covers every source
frame exactly once (`inference.stream.window_groups`); validation takes a few evenly spaced
windows.
"""

from __future__ import annotations

import numpy as np


def sequence_windows(frames: np.ndarray, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Consecutive windows over `frames` (source indices), the last one padded and masked."""
  frames = np.asarray(frames, np.int64)
  out = []
  for start in range(0, len(frames), window):
    chunk = frames[start : start + window]
    n = len(chunk)
    idx = np.concatenate([chunk, np.full(window - n, chunk[-1], np.int64)])
    mask = np.arange(window) < n
    out.append((idx, mask))
  return out


def validation_windows(num_frames: int, window: int, count: int = 4):
  """The original's validation crops over a (5 fps) sequence of `num_frames` frames: one padded
  window if the sequence is not longer than `window`, else `count` windows starting at
  int(i·(n − window)/(count − 1))."""
  if num_frames <= window or count == 1:
    return sequence_windows(np.arange(min(num_frames, window)), window)[:1]
  interval = (num_frames - window) / (count - 1)
  starts = [int(i * interval) for i in range(count)]
  return [(np.arange(s, s + window), np.ones(window, bool)) for s in starts]


def training_window(num_frames: int, window: int, rng: np.random.Generator) -> np.ndarray:
  """The original's training window: a random start when the sequence is long enough, else the
  frames repeated cyclically (i mod n)."""
  if num_frames > window:
    start = int(rng.integers(0, num_frames - window + 1))
    return np.arange(start, start + window)
  return np.arange(window) % num_frames
