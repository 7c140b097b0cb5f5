"""Saliency maps as files: the original's 8-bit conventions.

The original writes a float map as PNG through torchvision's `to_pil_image`, which multiplies by
255 in float32 and truncates; its ensemble script reads those PNGs back, fuses in float64 and
truncates again. These functions reproduce both steps exactly.
"""

from __future__ import annotations

import numpy as np


def map_to_uint8(prob) -> np.ndarray:
  """float map in [0, 1] → uint8 as the original saves it: trunc(float32(p·255))."""
  p = np.asarray(prob, dtype=np.float32)
  return np.clip(p * np.float32(255), 0, 255).astype(np.uint8)


def fuse_uint8(maps_u8, alpha: float = 0.5, eps: float = 1e-6) -> np.ndarray:
  """The original's logit fusion of two 8-bit maps (float64, clipped, truncated to uint8)."""
  a, b = (np.asarray(m, dtype=np.float64) / 255.0 for m in maps_u8)
  a, b = (np.clip(m, eps, 1 - eps) for m in (a, b))
  z = alpha * np.log(a / (1 - a)) + (1 - alpha) * np.log(b / (1 - b))
  fused = 1.0 / (1.0 + np.exp(-z))
  return np.clip(fused * 255, 0, 255).astype(np.uint8)
