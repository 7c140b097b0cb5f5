"""LoRA on the backbone's Linear layers and its Conv3d patch embedding, one adapter per expert.

Base weights are `nnx.Param` (frozen in training); the low-rank factors are `nnx.LoRAParam` with a
leading expert axis E, so that one program runs every expert over the same base weights:

  y[e] = x[e] @ W + b + (alpha / r) · (dropout(x[e]) @ A[e]) @ B[e]

The LoRA branch runs in float32 (its input cast to float32, as peft casts to A's dtype) and the sum
is cast back to the activation dtype. After `merge_lora` the kernel holds one folded copy per
expert,
(E, in, out), and the factors are gone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visage_jax.models.precision import high


def _lora_dropout(x, rate: float, rng):
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class LoRALinear(nnx.Module):
  """Linear layer (kernel (in, out)) with an optional per-expert LoRA adapter."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    *,
    use_bias: bool,
    num_experts: int,
    rank: int | None,
    alpha: float,
    param_dtype,
    rngs: nnx.Rngs,
    merged: bool = False,
  ):
    init = nnx.initializers.truncated_normal(0.02)
    shape = (num_experts, in_dim, out_dim) if merged else (in_dim, out_dim)
    self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype))
    rank = None if merged else rank
    self.bias = nnx.Param(jnp.zeros((out_dim,), param_dtype)) if use_bias else None
    if rank:
      a_init = nnx.initializers.variance_scaling(
        1 / 3, "fan_in", "uniform", in_axis=-2, out_axis=-1
      )
      self.lora_a = nnx.LoRAParam(a_init(rngs.params(), (num_experts, in_dim, rank), high()))
      self.lora_b = nnx.LoRAParam(jnp.zeros((num_experts, rank, out_dim), high()))
      self.scale = float(alpha) / float(rank)
    else:
      self.lora_a = self.lora_b = None
      self.scale = 0.0

  def __call__(self, x, *, dropout_rate: float = 0.0, dropout_rng=None):
    """x: (E, ..., in) → (E, ..., out)."""
    kernel = self.kernel[...]
    if kernel.ndim == 3:  # merged: one folded copy per expert
      y = jnp.einsum("e...i,eio->e...o", x, kernel.astype(x.dtype))
    else:
      y = jnp.einsum("e...i,io->e...o", x, kernel.astype(x.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    if self.lora_a is None:
      return y
    xa = _lora_dropout(x.astype(high()), dropout_rate, dropout_rng)
    h = jnp.einsum("e...i,eir->e...r", xa, self.lora_a[...])
    delta = jnp.einsum("e...r,ero->e...o", h, self.lora_b[...]) * self.scale
    return (y.astype(high()) + delta).astype(x.dtype)


class LoRAPatchEmbed(nnx.Module):
  """InternVideo2's Conv3d patch embedding (kernel = stride) with a per-expert LoRA adapter.

  kernel (kt, kh, kw, C, D); LoRA A is a Conv3d C→r with the same kernel and stride, B a 1×1×1
  Conv3d r→D, stored as (E, kt, kh, kw, C, r) and (E, r, D).
  """

  def __init__(
    self,
    patch: tuple[int, int, int],
    in_chans: int,
    dim: int,
    *,
    num_experts: int,
    rank: int | None,
    alpha: float,
    param_dtype,
    rngs: nnx.Rngs,
    merged: bool = False,
  ):
    self.patch = tuple(patch)
    shape = (*self.patch, in_chans, dim)
    init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=(-5, -4, -3, -2))
    if merged:
      shape = (num_experts, *shape)
      rank = None
    self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))
    if rank:
      a_init = nnx.initializers.variance_scaling(
        1 / 3, "fan_in", "uniform", in_axis=(1, 2, 3, 4), out_axis=-1
      )
      self.lora_a = nnx.LoRAParam(
        a_init(rngs.params(), (num_experts, *self.patch, in_chans, rank), high())
      )
      self.lora_b = nnx.LoRAParam(jnp.zeros((num_experts, rank, dim), high()))
      self.scale = float(alpha) / float(rank)
    else:
      self.lora_a = self.lora_b = None
      self.scale = 0.0
    self.num_experts = num_experts

  def patches(self, x):
    """(B, T, H, W, C) → (B, T', H', W', kt·kh·kw·C), each patch flattened in kernel order."""
    b, t, h, w, c = x.shape
    kt, kh, kw = self.patch
    x = x.reshape(b, t // kt, kt, h // kh, kh, w // kw, kw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, t // kt, h // kh, w // kw, kt * kh * kw * c)

  def __call__(self, x, *, dropout_rate: float = 0.0, dropout_rng=None):
    """x: (B, T, H, W, C) shared by all experts → (E, B, T', H', W', D)."""
    p = self.patches(x)
    kernel = self.kernel[...]
    bias = self.bias[...].astype(x.dtype)
    if kernel.ndim == 6:  # merged per expert
      k = kernel.reshape(kernel.shape[0], -1, kernel.shape[-1]).astype(x.dtype)
      return jnp.einsum("b...k,ekd->eb...d", p, k) + bias
    y = jnp.einsum("b...k,kd->b...d", p, kernel.reshape(-1, kernel.shape[-1]).astype(x.dtype))
    y = jnp.broadcast_to(y + bias, (self.num_experts, *y.shape))
    if self.lora_a is None:
      return y
    pa = _lora_dropout(
      jnp.broadcast_to(p.astype(high()), (self.num_experts, *p.shape)),
      dropout_rate,
      dropout_rng,
    )
    a = self.lora_a[...]
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    h = jnp.einsum("eb...k,ekr->eb...r", pa, a)
    delta = jnp.einsum("eb...r,erd->eb...d", h, self.lora_b[...]) * self.scale
    return (y.astype(high()) + delta).astype(x.dtype)


def merged_kernel(kernel: np.ndarray, lora_a: np.ndarray, lora_b: np.ndarray, scale: float):
  """Fold every expert's LoRA into a copy of the base kernel: (…, in, out) → (E, …, in, out).

  Works for Linear kernels (in, out) with A (E, in, r) and for the patch embedding's
  (kt, kh, kw, C, D) with A (E, kt, kh, kw, C, r); B is (E, r, out) in both. The fold is computed
  in float32 and stored in the base kernel's dtype.
  """
  a = jnp.asarray(lora_a, jnp.float32)
  b = jnp.asarray(lora_b, jnp.float32)
  delta = jnp.einsum("e...r,ero->e...o", a, b, precision=jax.lax.Precision.HIGHEST) * scale
  base = jnp.asarray(kernel).astype(jnp.float32)
  return (base[None] + delta).astype(jnp.asarray(kernel).dtype)


def fold_lora(flat: dict, scale: float) -> dict:
  """Fold every LoRA pair of a flat state {path: array} into per-expert kernels; drop the pairs.

  Stacked blocks have kernel (L, in, out) and A (L, E, in, r): the result is (L, E, in, out);
  the patch embedding's kernel (kt, kh, kw, C, D) becomes (E, kt, kh, kw, C, D).
  """
  out = dict(flat)
  owners = {tuple(p[:-1]) for p in flat if p[-1] == "lora_a"}
  for owner in sorted(owners, key=str):
    kernel = flat[owner + ("kernel",)]
    a, b = flat[owner + ("lora_a",)], flat[owner + ("lora_b",)]
    if "blocks" in owner:
      merged = np.stack(
        [np.asarray(merged_kernel(kernel[i], a[i], b[i], scale)) for i in range(kernel.shape[0])]
      )
    else:
      merged = np.asarray(merged_kernel(kernel, a, b, scale))
    out[owner + ("kernel",)] = merged
    del out[owner + ("lora_a",)], out[owner + ("lora_b",)]
  return out
