"""Batches of clip windows for one video: model input, ground truth and fixations together."""

from __future__ import annotations

import numpy as np

from visage_jax.data.challenge import fixation_counts
from visage_jax.data.video import normalize, resize_frames, to_gray


def window_batches(windows, batch_size: int):
  """Group windows into batches of exactly `batch_size`, the last padded with masked copies."""
  for start in range(0, len(windows), batch_size):
    chunk = list(windows[start : start + batch_size])
    real = len(chunk)
    while len(chunk) < batch_size:
      idx, mask = chunk[0]
      chunk.append((idx, np.zeros_like(mask)))
    yield chunk, real


def load_batch(chunk, video, *, size: int, saliency=None, fixations=None):
  """Decode one batch of windows: clip (B, T, S, S, 3) float32 normalised, mask (B, T), indices
  (B, T); with `saliency` (a reader) and `fixations` (per-frame points) also gt (B, T, H, W) uint8
  and fixations (B, T, H, W) int32 at source resolution."""
  indices = np.stack([idx for idx, _ in chunk])
  mask = np.stack([m for _, m in chunk])
  unique, inverse = np.unique(indices, return_inverse=True)
  frames = resize_frames(video.frames(unique), size)
  batch = {
    "clip": normalize(frames[inverse.reshape(indices.shape)]),
    "mask": mask,
    "indices": indices,
  }
  if saliency is not None:
    gt = to_gray(saliency.frames(unique))
    batch["gt"] = gt[inverse.reshape(indices.shape)]
  if fixations is not None:
    counts = fixation_counts(fixations, unique, video.height, video.width)
    batch["fixations"] = counts[inverse.reshape(indices.shape)]
  return batch
