"""Reference definitions the tests hold our code against: the original's own steps, written
plainly, which no code of visage_jax needs."""

from __future__ import annotations

import numpy as np

from visage_jax.data.windows import sequence_windows


def inference_windows(num_frames: int, window: int, stride: int = 6):
  """The original's inference cover: `stride` interleaved sequences (offset o takes frames
  o, o + stride, …), each cut into consecutive windows. Every frame appears exactly once among the
  masked-in positions. stride = source fps / model fps (30 / 5 = 6)."""
  if num_frames <= 0:
    raise ValueError(f"a video needs at least one frame, got {num_frames}")
  if stride < 1 or window < 1:
    raise ValueError(f"stride and window must be positive, got {stride}, {window}")
  out = []
  for offset in range(min(stride, num_frames)):
    out.extend(sequence_windows(np.arange(offset, num_frames, stride), window))
  return out


def fuse_uint8(maps_u8, alpha: float = 0.5, eps: float = 1e-6) -> np.ndarray:
  """The original's logit fusion of two 8-bit maps (float64, clipped, truncated to uint8)."""
  a, b = (np.asarray(m, dtype=np.float64) / 255.0 for m in maps_u8)
  a, b = (np.clip(m, eps, 1 - eps) for m in (a, b))
  z = alpha * np.log(a / (1 - a)) + (1 - alpha) * np.log(b / (1 - b))
  fused = 1.0 / (1.0 + np.exp(-z))
  return np.clip(fused * 255, 0, 255).astype(np.uint8)
