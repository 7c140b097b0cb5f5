"""How a saliency map is written and read back: the original's 8-bit conversion and OpenCV's
bilinear resize, shared by the challenge's scoring (`metrics.saliency`, on the device) and the
map files `visage-predict` writes (`inference.writers`, on the host), so that a scored map is
exactly the saved one."""

from __future__ import annotations

import functools

import numpy as np


def map_to_uint8(prob) -> np.ndarray:
  """float map in [0, 1] → uint8 as the original saves it: trunc(float32(p·255))."""
  p = np.asarray(prob, dtype=np.float32)
  return np.clip(p * np.float32(255), 0, 255).astype(np.uint8)


@functools.cache
def linear_weights(in_size: int, out_size: int):
  """OpenCV INTER_LINEAR along one axis: half-pixel centres, edge clamp, two taps (no
  antialiasing when shrinking). Returns (index0, index1, w0, w1), numpy arrays.

  The coefficients are double precision: that is what cv2.resize computes for float64 images of
  two or more rows (checked against opencv-python 4.10 and 5.0; a single-row image takes another
  path with float32 coefficients, which no saliency map needs).
  """
  scale = 1.0 / (out_size / in_size)  # OpenCV keeps inv_scale = dst/src and inverts it
  idx0 = np.zeros(out_size, np.int64)
  w1 = np.zeros(out_size, np.float64)
  for d in range(out_size):
    fx = (d + 0.5) * scale - 0.5
    sx = int(np.floor(fx))
    fx -= sx
    if sx < 0:
      fx, sx = 0.0, 0
    if sx >= in_size - 1:
      fx, sx = 0.0, in_size - 1
    idx0[d], w1[d] = sx, fx
  idx1 = np.minimum(idx0 + 1, in_size - 1)
  return idx0, idx1, 1.0 - w1, w1


def resize_linear(x, out_hw: tuple[int, int], xp=np):
  """cv2.resize(x, (W, H), interpolation=INTER_LINEAR) of float maps (..., h, w) → (..., H, W),
  in x's dtype, with `xp` numpy (on the host) or jax.numpy (jittable)."""
  for axis, n in ((-1, out_hw[1]), (-2, out_hw[0])):
    if x.shape[axis] == n:
      continue
    i0, i1, w0, w1 = linear_weights(x.shape[axis], n)
    shape = [1] * x.ndim
    shape[axis] = n
    a, b = xp.take(x, xp.asarray(i0), axis=axis), xp.take(x, xp.asarray(i1), axis=axis)
    x = a * xp.asarray(w0, x.dtype).reshape(shape) + b * xp.asarray(w1, x.dtype).reshape(shape)
  return x


def resized_uint8(prob, out_hw: tuple[int, int], *, rows: int = 64) -> np.ndarray:
  """`map_to_uint8(resize_linear(float64 prob, out_hw))` of one (h, w) map, the same operations
  on the same values, worked `rows` output rows at a time so that the float64 rows stay in the
  cache (2.6× at 1080p)."""
  out_h, out_w = out_hw
  x = resize_linear(np.asarray(prob, np.float64), (np.shape(prob)[0], out_w))  # the rows first
  vertical = x.shape[0] != out_h
  if vertical:
    i0, i1, w0, w1 = linear_weights(x.shape[0], out_h)
  out = np.empty((out_h, out_w), np.uint8)
  for r0 in range(0, out_h, rows):
    r1 = min(r0 + rows, out_h)
    if vertical:
      block = x[i0[r0:r1]] * w0[r0:r1, None] + x[i1[r0:r1]] * w1[r0:r1, None]
    else:
      block = x[r0:r1]
    out[r0:r1] = map_to_uint8(block)
  return out


# A map resized and quantised in float32 (on the device) lands on the same level as
# `resized_uint8`'s float64 unless p·255 lies within this many levels of a level's edge: for maps
# in [0, 1] the two values differ by under 8·2⁻²⁴·255 ≈ 1.2e-4 (two passes of two rounded
# products and a sum, the weights rounded, the cast and the scaling), so 1e-3 leaves 8×.
LEVEL_MARGIN = 1e-3


def device_levels(prob, out_hw: tuple[int, int]):
  """`resized_uint8` of maps (..., h, w) computed in float32 with jax.numpy (jittable), and which
  pixels it may have got wrong: (levels uint8 (..., H, W), unsure bits uint8 (..., ⌈H·W/8⌉),
  little-endian over the row-major pixels). A pixel is unsure where p·255 lies within
  LEVEL_MARGIN of a level's edge (1 … 255); `settle_levels` recomputes those on the host. Without
  a resize nothing is unsure: the float32 products are the host's."""
  import jax.numpy as jnp

  prob = jnp.asarray(prob, jnp.float32)
  scaled = resize_linear(prob, out_hw, xp=jnp) * jnp.float32(255)
  levels = jnp.clip(scaled, 0, 255).astype(jnp.uint8)
  if tuple(prob.shape[-2:]) == tuple(out_hw):
    unsure = jnp.zeros(levels.shape, bool)
  else:
    edge = jnp.round(scaled)
    unsure = (jnp.abs(scaled - edge) < LEVEL_MARGIN) & (edge >= 1) & (edge <= 255)
  flat = unsure.reshape(*unsure.shape[:-2], -1)
  flat = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, -flat.shape[-1] % 8)])
  bits = flat.reshape(*flat.shape[:-1], -1, 8).astype(jnp.uint8) << jnp.arange(8, dtype=jnp.uint8)
  return levels, jnp.sum(bits, axis=-1, dtype=jnp.uint8)


def settle_levels(levels, unsure_bits, prob) -> np.ndarray:
  """`resized_uint8(prob, levels.shape)` from one map's `device_levels`: its unsure pixels
  recomputed in float64 as `resized_uint8` computes them, the others kept."""
  out_h, out_w = levels.shape
  marked = np.flatnonzero(unsure_bits)  # the bytes with a bit set: few, so unpack only those
  bits = np.unpackbits(unsure_bits[marked, None], axis=1, bitorder="little").astype(bool)
  at = (marked[:, None] * 8 + np.arange(8))[bits]
  if not at.size:
    return levels
  rows, cols = np.divmod(at, out_w)
  levels = levels.copy()
  levels.flat[at] = map_to_uint8(
    _resized_at(np.asarray(prob, np.float64), (out_h, out_w), rows, cols)
  )
  return levels


def _resized_at(prob, out_hw, rows, cols) -> np.ndarray:
  """`resize_linear(prob float64, out_hw)` at the pixels (rows, cols) alone: the rows resized
  first, then the columns, with the same operations on the same values."""
  in_h, in_w = prob.shape

  def across(source_rows):  # the horizontal pass at the wanted columns
    if in_w == out_hw[1]:
      return prob[source_rows, cols]
    i0, i1, w0, w1 = linear_weights(in_w, out_hw[1])
    return prob[source_rows, i0[cols]] * w0[cols] + prob[source_rows, i1[cols]] * w1[cols]

  if in_h == out_hw[0]:
    return across(rows)
  i0, i1, w0, w1 = linear_weights(in_h, out_hw[0])
  return across(i0[rows]) * w0[rows] + across(i1[rows]) * w1[rows]
