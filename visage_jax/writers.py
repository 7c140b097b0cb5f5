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


def write_png(path: str, image_u8) -> None:
  """An 8-bit grayscale (H, W) or RGB (H, W, 3) PNG."""
  from PIL import Image

  Image.fromarray(np.asarray(image_u8, np.uint8)).save(path, format="PNG")


def write_mp4(path: str, frames, fps: float, *, crf: int = 18, lossless: bool = False) -> None:
  """uint8 frames (N, H, W) or (N, H, W, 3) → H.264 mp4 at `fps`, one video frame per array frame.

  `lossless` uses x264's lossless mode in 4:4:4, so a grayscale map decodes back exactly (up to
  the YUV↔RGB conversion of the reader); otherwise yuv420p at `crf`, which every player reads.
  Odd sizes are padded by repeating the last row/column (yuv420p needs even sizes).
  """
  import fractions

  import av

  frames = np.asarray(frames, np.uint8)
  if frames.ndim == 3:
    frames = np.repeat(frames[..., None], 3, axis=-1)
  if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
    raise ValueError(f"{path}: expected (N, H, W[, 3]) uint8 frames, got {frames.shape}")
  h, w = frames.shape[1:3]
  if not lossless and (h % 2 or w % 2):
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(path, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    if lossless:
      stream.pix_fmt = "yuv444p"
      stream.options = {"qp": "0", "preset": "medium"}
    else:
      stream.pix_fmt = "yuv420p"
      stream.options = {"crf": str(crf), "preset": "medium"}
    stream.time_base = 1 / rate
    for i, f in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(f, format="rgb24")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def resize_map(prob, out_hw: tuple[int, int]) -> np.ndarray:
  """A float (h, w) map resized to (H, W) with OpenCV's bilinear (the challenge's resize)."""
  from visage_jax.metrics import _cv_linear_weights

  x = np.asarray(prob, np.float64)
  for axis, n in ((1, out_hw[1]), (0, out_hw[0])):
    if x.shape[axis] == n:
      continue
    i0, i1, w0, w1 = _cv_linear_weights(x.shape[axis], n)
    if axis == 1:
      x = x[:, i0] * w0 + x[:, i1] * w1
    else:
      x = x[i0] * w0[:, None] + x[i1] * w1[:, None]
  return x


def map_filename(frame_index: int) -> str:
  """The challenge's name for 0-based frame `frame_index`: eyeMap_%05d.png, 1-based."""
  return f"eyeMap_{frame_index + 1:05d}.png"


def _jet(x: np.ndarray) -> np.ndarray:
  """Matplotlib-style 'jet' colours for x in [0, 1]: (..., 3) float in [0, 1]."""
  r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
  g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
  b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
  return np.stack([r, g, b], axis=-1)


def overlay(frame_u8, map_u8, *, strength: float = 0.6) -> np.ndarray:
  """The map as a colour heat map blended over the frame, more opaque where it is higher."""
  m = np.asarray(map_u8, np.float32) / 255.0
  alpha = (strength * m)[..., None]
  heat = _jet(m) * 255.0
  out = (1 - alpha) * np.asarray(frame_u8, np.float32) + alpha * heat
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)
