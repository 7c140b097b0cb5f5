"""Small layers shared by the backbone and the decoders, with PyTorch's numerics.

Layouts are channels last: video features (B, T, H, W, C), images (N, H, W, C).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visage_jax.models.precision import high


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x²) + eps) · weight, normalised in float32 and cast back before the weight;
  the weight is taken in x's dtype (the original's when the two dtypes are one, as converted;
  activations in bfloat16 over float32 weights stay bfloat16)."""

  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs | None = None):
    del rngs
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    in_dtype = x.dtype
    x32 = x.astype(high())
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(in_dtype)
    return self.weight[...].astype(in_dtype) * normed


class LayerScale(nnx.Module):
  """Per-channel scale computed in float32 (InternVideo2's `force_fp32`)."""

  def __init__(self, dim: int, *, param_dtype, init_value: float = 1e-5):
    self.gamma = nnx.Param(jnp.full((dim,), init_value, param_dtype))

  def __call__(self, x):
    out = x.astype(high()) * self.gamma[...].astype(high())
    return out.astype(x.dtype)


class BatchNorm(nnx.Module):
  """PyTorch BatchNorm over every axis but the last.

  Training mode normalises with the batch's biased variance and updates the running variance with
  the unbiased one (as PyTorch does); evaluation mode uses the running statistics.
  """

  def __init__(self, dim: int, *, eps: float = 1e-5, momentum: float = 0.1):
    self.weight = nnx.Param(jnp.ones((dim,), high()))
    self.bias = nnx.Param(jnp.zeros((dim,), high()))
    self.running_mean = nnx.BatchStat(jnp.zeros((dim,), high()))
    self.running_var = nnx.BatchStat(jnp.ones((dim,), high()))
    self.eps = eps
    self.momentum = momentum
    self.use_running_average = True

  def __call__(self, x):
    if self.use_running_average:
      mean, var = self.running_mean[...], self.running_var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axis=axes)
      var = jnp.mean(jnp.square(x - mean), axis=axes)
      n = np.prod([x.shape[a] for a in axes])
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      self.running_mean[...] = (1 - m) * self.running_mean[...] + m * jax.lax.stop_gradient(mean)
      self.running_var[...] = (1 - m) * self.running_var[...] + m * jax.lax.stop_gradient(unbiased)
    inv = jax.lax.rsqrt(var + self.eps)
    return (x - mean) * inv * self.weight[...] + self.bias[...]


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
  """The original's rule: 32 groups when they divide the channels, else 16, 8, 4, 2, 1."""
  for groups in (max_groups, 16, 8, 4, 2, 1):
    if channels % groups == 0:
      return groups
  return 1


class GroupNorm(nnx.Module):
  """PyTorch GroupNorm on channels-last input: statistics per sample over (spatial…, C/G)."""

  def __init__(self, dim: int, *, eps: float = 1e-5):
    self.num_groups = group_norm_groups(dim)
    self.weight = nnx.Param(jnp.ones((dim,), high()))
    self.bias = nnx.Param(jnp.zeros((dim,), high()))
    self.eps = eps

  def __call__(self, x):
    """Two passes (mean, then the mean square of x − mean), each reduced over space per channel
    and then over the group's channels: XLA's CPU backend runs that order several times faster,
    forward and backward, than one reduction over (space, channels-in-group)."""
    n, c = x.shape[0], x.shape[-1]
    g = self.num_groups
    count = (x.size // n) // g

    def group_mean(per_sample):  # (N, spatial…, C) → (N, 1…, C), each channel its group's mean
      sums = jnp.sum(per_sample.reshape(n, -1, c), axis=1).reshape(n, g, c // g)
      means = jnp.repeat(jnp.sum(sums, axis=-1) / count, c // g, axis=-1)
      return means.reshape(n, *(1,) * (x.ndim - 2), c)

    centred = x - group_mean(x)
    inv = jax.lax.rsqrt(group_mean(jnp.square(centred)) + self.eps)
    return centred * (inv * self.weight[...]) + self.bias[...]


class Conv(nnx.Module):
  """N-d convolution, stride 1, 'same' zero padding, kernel (k…, in, out) as PyTorch's permuted."""

  def __init__(
    self, in_dim, out_dim, kernel_size: tuple[int, ...], *, use_bias: bool, rngs, groups=1
  ):
    fan_in = (in_dim // groups) * int(np.prod(kernel_size))
    init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    shape = (*kernel_size, in_dim // groups, out_dim)
    self.kernel = nnx.Param(init(rngs.params(), shape, high()))
    bound = 1 / np.sqrt(fan_in)
    self.bias = (
      nnx.Param(jax.random.uniform(rngs.params(), (out_dim,), high(), -bound, bound))
      if use_bias
      else None
    )
    self.groups = groups
    self.kernel_size = tuple(kernel_size)

  def __call__(self, x):
    nd = len(self.kernel_size)
    kernel = self.kernel[...]
    if all(k == 1 for k in self.kernel_size) and self.groups == 1:
      y = jnp.einsum("...i,io->...o", x, kernel.reshape(kernel.shape[-2:]))
    else:
      spatial = "DHW"[-nd:] if nd <= 3 else None
      dn = jax.lax.conv_dimension_numbers(
        x.shape, kernel.shape, ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
      )
      pad = [(k // 2, k // 2) for k in self.kernel_size]
      y = jax.lax.conv_general_dilated(
        x, kernel, (1,) * nd, pad, dimension_numbers=dn, feature_group_count=self.groups
      )
    if self.bias is not None:
      y = y + self.bias[...]
    return y

  def of_resized(self, x, size: tuple[int, int], impl: str = "auto"):
    """self(x resized bilinearly to `size`) for x (N, h, w, C): "separate" resizes then convolves,
    "folded" (3×3 kernels only) runs `conv3x3_of_resized`; see `resolve_resize_conv`."""
    if resolve_resize_conv(impl) == "separate":
      return self(resize_axis_linear(resize_axis_linear(x, 1, size[0]), 2, size[1]))
    if self.kernel_size != (3, 3) or self.groups != 1:
      raise ValueError(f"a folded resize needs a 3×3 convolution, not {self.kernel_size}")
    y = conv3x3_of_resized(x, size, self.kernel[...])
    return y + self.bias[...] if self.bias is not None else y


RESIZE_CONV_IMPLS = ("auto", "folded", "separate")


def resolve_resize_conv(impl: str) -> str:
  """ "auto": "folded" on a CPU (measured there: 2.3× faster forward, 13× faster gradients for the
  heads' first convolution), "separate" elsewhere until it is measured on GPUs and TPUs."""
  if impl not in RESIZE_CONV_IMPLS:
    raise ValueError(
      f"model.resize_conv must be one of {', '.join(RESIZE_CONV_IMPLS)}, got {impl!r}"
    )
  if impl == "auto":
    return "folded" if jax.default_backend() == "cpu" else "separate"
  return impl


class Linear(nnx.Module):
  """Dense layer with kernel (in, out) (PyTorch's weight transposed)."""

  def __init__(self, in_dim, out_dim, *, use_bias=True, rngs, zero_init=False):
    if zero_init:
      kernel = jnp.zeros((in_dim, out_dim), high())
    else:
      kernel = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")(
        rngs.params(), (in_dim, out_dim), high()
      )
    self.kernel = nnx.Param(kernel)
    self.bias = nnx.Param(jnp.zeros((out_dim,), high())) if use_bias else None

  def __call__(self, x):
    y = x @ self.kernel[...]
    return y + self.bias[...] if self.bias is not None else y


@functools.lru_cache(maxsize=64)
def _linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Weights of PyTorch's linear interpolation with align_corners=False, as an (out, in) matrix.

  Source coordinate (dst + 0.5)·(in/out) − 0.5, clamped at 0; the upper neighbour clamped to the
  last sample. Computed in float32 like PyTorch's CPU kernel.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  i0 = np.floor(src).astype(np.int64)
  i0 = np.minimum(i0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam1 = (src - i0.astype(np.float32)).astype(np.float32)
  lam0 = (np.float32(1) - lam1).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.arange(out_size), i0), lam0)
  np.add.at(m, (np.arange(out_size), i1), lam1)
  return m


def resize_axis_linear(x, axis: int, out_size: int):
  """Linear resize of one axis with PyTorch's align_corners=False semantics."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  m = jnp.asarray(_linear_resize_matrix(in_size, out_size), x.dtype)
  x = jnp.moveaxis(x, axis, -1)
  y = jnp.einsum("...i,oi->...o", x, m, precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(y, -1, axis)


def resize_trilinear(x, size: tuple[int, int, int]):
  """(B, T, H, W, C) → (B, *size, C), as F.interpolate(mode='trilinear', align_corners=False)."""
  for axis, n in zip((1, 2, 3), size):
    x = resize_axis_linear(x, axis, n)
  return x


@functools.lru_cache(maxsize=64)
def _shifted_resize_matrices(in_size: int, out_size: int) -> np.ndarray:
  """(3, out, in): the linear-resize matrix with its rows moved by −1, 0 and +1 output positions,
  a zero row where a 3-wide 'same' convolution reads the zero padding."""
  m = _linear_resize_matrix(in_size, out_size)
  padded = np.pad(m, ((1, 1), (0, 0)))
  return np.stack([padded[i : i + out_size] for i in range(3)])


def conv3x3_of_resized(x, size: tuple[int, int], kernel):
  """conv3x3(resize_bilinear(x, size)) with 'same' zero padding, computed from the small grid.

  x: (N, h, w, C); kernel (3, 3, C, O). Both maps are linear, so the kernel is applied first on
  the h×w grid (one product per tap) and the two resize matrices, shifted by each tap's offset,
  carry the result to `size`: about a tenth of the arithmetic of a 3×3 convolution on the
  resized map when it is 14× larger per side, and no (N, *size, C) intermediate. The sums are
  reassociated, so values agree with the two-step form to float32 rounding.
  """
  n, h, w, c = x.shape
  rows = jnp.asarray(_shifted_resize_matrices(h, size[0]), x.dtype)  # (3, H, h)
  cols = jnp.asarray(_shifted_resize_matrices(w, size[1]), x.dtype)  # (3, W, w)
  highest = jax.lax.Precision.HIGHEST
  taps = jnp.einsum("nabc,ijco->nabijo", x, kernel)
  taps = jnp.einsum("iHa,nabijo->nHbjo", rows, taps, precision=highest)
  return jnp.einsum("jWb,nHbjo->nHWo", cols, taps, precision=highest)


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace in float32: the first half counts up from start, the second down from end.

  This is torch's scalar formula; its vectorised CPU kernel can differ in the last bit (by SIMD
  width), which moves the centre-bias grid by at most one ulp.
  """
  step = np.float32((np.float32(end) - np.float32(start)) / np.float32(steps - 1))
  idx = np.arange(steps)
  half = steps // 2
  out = np.where(
    idx < half,
    np.float32(start) + step * idx.astype(np.float32),
    np.float32(end) - step * (steps - idx - 1).astype(np.float32),
  )
  return out.astype(np.float32)
