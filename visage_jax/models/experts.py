"""The two decoder experts, each with its own neck (four pointwise D→neck reducers, float32).

Inputs are the four backbone taps from shallow to deep, (B, T, H, W, D), named f5, f11, f17, f23
as the original names them. Outputs are probabilities (B, T, S, S) at the model's output size S.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from visage_jax.models.layers import (
  BatchNorm,
  Conv,
  GroupNorm,
  Linear,
  resize_trilinear,
  torch_linspace,
)
from visage_jax.models.precision import high


def _match_size(x, target_shape):
  if x.shape[1:4] != tuple(target_shape):
    x = resize_trilinear(x, tuple(target_shape))
  return x


def _per_frame(fn, x):
  """Apply a 2D stack to every frame: (B, T, H, W, C) → (B, T, H', W', C')."""
  b, t = x.shape[:2]
  y = fn(x.reshape(b * t, *x.shape[2:]))
  return y.reshape(b, t, *y.shape[1:])


class Neck(nnx.Module):
  """`dim_reducers`: one pointwise Conv3d D→neck per tap, in float32."""

  def __init__(self, in_dim, out_dim, num_taps, *, rngs):
    self.dim_reducers = nnx.List(
      [Conv(in_dim, out_dim, (1, 1, 1), use_bias=True, rngs=rngs) for _ in range(num_taps)]
    )

  def __call__(self, taps):
    return [r(t.astype(high())) for r, t in zip(self.dim_reducers, taps)]


# ----------------------------------------------------------------------------------------------
# Expert 1: temporal-modulated decoding with spatial priors (docs/model.md §5)


class TemporalAttention(nnx.Module):
  def __init__(self, dim, *, rngs):
    self.conv = Conv(dim, dim, (3,), use_bias=True, rngs=rngs)

  def __call__(self, x):
    pooled = jnp.mean(x, axis=(2, 3))  # (B, T, C)
    return jax.nn.sigmoid(self.conv(pooled))[:, :, None, None, :]


class ResBlend(nnx.Module):
  """Conv3³-BN-ReLU-Conv3³-BN plus identity (or 1×1×1 conv + BN when channels change), ReLU."""

  def __init__(self, in_dim, out_dim, *, bn_eps, bn_momentum, rngs):
    bn = dict(eps=bn_eps, momentum=bn_momentum)
    self.conv1 = Conv(in_dim, out_dim, (3, 3, 3), use_bias=False, rngs=rngs)
    self.bn1 = BatchNorm(out_dim, **bn)
    self.conv2 = Conv(out_dim, out_dim, (3, 3, 3), use_bias=False, rngs=rngs)
    self.bn2 = BatchNorm(out_dim, **bn)
    if in_dim != out_dim:
      self.shortcut_conv = Conv(in_dim, out_dim, (1, 1, 1), use_bias=False, rngs=rngs)
      self.shortcut_bn = BatchNorm(out_dim, **bn)
    else:
      self.shortcut_conv = self.shortcut_bn = None

  def __call__(self, x):
    identity = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return jax.nn.relu(out + identity)


class CenterBias(nnx.Module):
  """w·exp(−((x−cx)² + (y−cy)²) / (2σ² + 1e-7)) on a linspace(−1, 1) grid, y down the rows."""

  def __init__(self, size: int):
    self.cx = nnx.Param(jnp.zeros((), high()))
    self.cy = nnx.Param(jnp.zeros((), high()))
    self.sigma = nnx.Param(jnp.full((), 0.5, high()))
    self.weight = nnx.Param(jnp.zeros((), high()))
    self.size = size

  def __call__(self):
    grid = jnp.asarray(torch_linspace(-1.0, 1.0, self.size))
    xx, yy = grid[None, :], grid[:, None]
    sq = jnp.square(xx - self.cx[...]) + jnp.square(yy - self.cy[...])
    gaussian = jnp.exp(-sq / (2 * jnp.square(self.sigma[...]) + 1e-7))
    return self.weight[...] * gaussian


class FinalHead(nnx.Module):
  """Per frame: bilinear resize to the output size, Conv2d 3×3 (no bias), BN, ReLU, Conv2d 3×3 → 1.

  The resize is the spatial part of the original's trilinear one (the frame count is kept), and
  may be folded into the first convolution (`model.resize_conv`)."""

  def __init__(self, dim, *, output_size, resize_conv, bn_eps, bn_momentum, rngs):
    self.conv1 = Conv(dim, dim // 2, (3, 3), use_bias=False, rngs=rngs)
    self.bn = BatchNorm(dim // 2, eps=bn_eps, momentum=bn_momentum)
    self.conv2 = Conv(dim // 2, 1, (3, 3), use_bias=True, rngs=rngs)
    self.size = (output_size, output_size)
    self.resize_conv = resize_conv

  def __call__(self, x):
    x = self.conv1.of_resized(x, self.size, self.resize_conv)
    return self.conv2(jax.nn.relu(self.bn(x)))


class Expert1Decoder(nnx.Module):
  def __init__(self, neck_dim, dim, *, output_size, resize_conv, bn_eps, bn_momentum, rngs):
    bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
    self.temp_attn = TemporalAttention(neck_dim, rngs=rngs)
    self.proj23_attn = Conv(neck_dim, dim, (1, 1, 1), use_bias=True, rngs=rngs)
    self.upsample5 = Conv(neck_dim, dim, (1, 1, 1), use_bias=True, rngs=rngs)
    self.upsample11 = Conv(neck_dim, dim, (1, 1, 1), use_bias=True, rngs=rngs)
    self.proj17 = Conv(neck_dim, dim, (1, 1, 1), use_bias=True, rngs=rngs)
    self.conv17 = ResBlend(dim, dim, **bn, rngs=rngs)
    self.blend11 = ResBlend(2 * dim, dim, **bn, rngs=rngs)
    self.blend5 = ResBlend(2 * dim, dim, **bn, rngs=rngs)
    self.final_head = FinalHead(
      dim, output_size=output_size, resize_conv=resize_conv, **bn, rngs=rngs
    )
    self.center_bias = CenterBias(output_size)

  def __call__(self, features, gamma, beta):
    """Returns logits (B, T, S, S) before the sigmoid."""
    f5, f11, f17, f23 = features
    attn = self.proj23_attn(self.temp_attn(f23))  # (B, T, 1, 1, E), no sigmoid after the proj
    x17 = self.conv17(self.proj17(f17) * attn)
    x11 = self.upsample11(f11) * attn
    x11 = self.blend11(jnp.concatenate([x11, _match_size(x17, x11.shape[1:4])], axis=-1))
    x5 = self.upsample5(f5) * attn
    x5 = self.blend5(jnp.concatenate([x5, _match_size(x11, x5.shape[1:4])], axis=-1))
    x5 = x5 * (1 + gamma[:, None, None, None, :]) + beta[:, None, None, None, :]
    logits = _per_frame(self.final_head, x5)[..., 0]
    return logits + self.center_bias()


class Expert1(nnx.Module):
  """Neck, FiLM from the CLS token, and the Expert 1 decoder."""

  def __init__(self, cfg, *, rngs):
    d = cfg.backbone.embed_dim
    self.neck = Neck(d, cfg.neck_dim, len(cfg.backbone.taps), rngs=rngs)
    self.decoder = Expert1Decoder(
      cfg.neck_dim,
      cfg.decoder_dim,
      output_size=cfg.output_size,
      resize_conv=cfg.get("resize_conv", "auto"),
      bn_eps=cfg.bn_eps,
      bn_momentum=cfg.bn_momentum,
      rngs=rngs,
    )
    self.film_gamma = Linear(d, cfg.decoder_dim, rngs=rngs, zero_init=True)
    self.film_beta = Linear(d, cfg.decoder_dim, rngs=rngs, zero_init=True)

  def __call__(self, taps, cls, *, with_aux: bool = False):
    del with_aux
    cls = cls.astype(high())
    gamma, beta = self.film_gamma(cls), self.film_beta(cls)
    logits = self.decoder(self.neck(taps), gamma, beta)
    return {"map": jax.nn.sigmoid(logits), "film_gamma": gamma, "film_beta": beta}


# ----------------------------------------------------------------------------------------------
# Expert 2: multi-scale fusion with deep auxiliary supervision (docs/model.md §6)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)


class Projection(nnx.Module):
  """Conv3d 1×1×1 (no bias), GroupNorm, GELU."""

  def __init__(self, in_dim, out_dim, *, gn_eps, rngs):
    self.conv = Conv(in_dim, out_dim, (1, 1, 1), use_bias=False, rngs=rngs)
    self.norm = GroupNorm(out_dim, eps=gn_eps)

  def __call__(self, x):
    return _gelu(self.norm(self.conv(x)))


class TemporalGate(nnx.Module):
  def __init__(self, dim, *, rngs):
    self.depthwise = Conv(dim, dim, (3,), use_bias=False, groups=dim, rngs=rngs)
    self.pointwise = Conv(dim, dim, (1,), use_bias=True, rngs=rngs)

  def __call__(self, x):
    pooled = jnp.mean(x, axis=(2, 3))  # (B, T, C)
    # Depthwise k=3 conv over time written out as three shifted products: the same sums as
    # PyTorch's grouped Conv1d, and it avoids XLA's grouped-convolution gradient, which came out
    # wrong when the batch is sharded over devices on the CPU backend (jaxlib 0.10.2).
    k = self.depthwise.kernel[...][:, 0, :]  # (3, C)
    padded = jnp.pad(pooled, ((0, 0), (1, 1), (0, 0)))
    t = pooled.shape[1]
    depth = padded[:, 0:t] * k[0] + padded[:, 1 : t + 1] * k[1] + padded[:, 2 : t + 2] * k[2]
    gate = self.pointwise(depth)
    return jax.nn.sigmoid(gate)[:, :, None, None, :]


class Fuse(nnx.Module):
  """Conv3³-GN-GELU-Conv3³-GN plus identity (or 1×1×1 conv + GN), GELU."""

  def __init__(self, in_dim, out_dim, *, gn_eps, rngs):
    self.conv1 = Conv(in_dim, out_dim, (3, 3, 3), use_bias=False, rngs=rngs)
    self.norm1 = GroupNorm(out_dim, eps=gn_eps)
    self.conv2 = Conv(out_dim, out_dim, (3, 3, 3), use_bias=False, rngs=rngs)
    self.norm2 = GroupNorm(out_dim, eps=gn_eps)
    if in_dim != out_dim:
      self.shortcut_conv = Conv(in_dim, out_dim, (1, 1, 1), use_bias=False, rngs=rngs)
      self.shortcut_norm = GroupNorm(out_dim, eps=gn_eps)
    else:
      self.shortcut_conv = self.shortcut_norm = None

  def __call__(self, x):
    identity = x if self.shortcut_conv is None else self.shortcut_norm(self.shortcut_conv(x))
    out = _gelu(self.norm1(self.conv1(x)))
    out = self.norm2(self.conv2(out))
    return _gelu(out + identity)


class SaliencyHead(nnx.Module):
  """Conv3d 3³ → GN → GELU; per frame bilinear to (S, S), Conv2d-GN-GELU-Conv2d → logits (the
  resize may be folded into the first Conv2d, see `FinalHead`)."""

  def __init__(self, dim, hidden, *, output_size, resize_conv, gn_eps, rngs):
    self.pre_conv = Conv(dim, hidden, (3, 3, 3), use_bias=False, rngs=rngs)
    self.pre_norm = GroupNorm(hidden, eps=gn_eps)
    self.conv1 = Conv(hidden, hidden, (3, 3), use_bias=False, rngs=rngs)
    self.norm1 = GroupNorm(hidden, eps=gn_eps)
    self.conv2 = Conv(hidden, 1, (3, 3), use_bias=True, rngs=rngs)
    self.size = (output_size, output_size)
    self.resize_conv = resize_conv

  def __call__(self, x):
    x = _gelu(self.pre_norm(self.pre_conv(x)))

    def head(y):  # GroupNorm statistics per frame, as on the original's (B·T, C, H, W)
      y = self.conv1.of_resized(y, self.size, self.resize_conv)
      return self.conv2(_gelu(self.norm1(y)))

    return _per_frame(head, x)[..., 0]


class Expert2Decoder(nnx.Module):
  def __init__(self, neck_dim, dim, *, output_size, resize_conv, gn_eps, rngs):
    hidden = max(dim // 2, 64)
    g = dict(gn_eps=gn_eps, rngs=rngs)
    self.proj5 = Projection(neck_dim, dim, **g)
    self.proj11 = Projection(neck_dim, dim, **g)
    self.proj17 = Projection(neck_dim, dim, **g)
    self.proj23 = Projection(neck_dim, dim, **g)
    self.temporal_gate = TemporalGate(dim, rngs=rngs)
    self.refine23 = Fuse(dim, dim, **g)
    self.fuse17 = Fuse(2 * dim, dim, **g)
    self.fuse11 = Fuse(2 * dim, dim, **g)
    self.fuse5 = Fuse(2 * dim, dim, **g)
    self.refine3d = nnx.List([Fuse(dim, dim, **g), Fuse(dim, dim, **g)])
    h = dict(output_size=output_size, resize_conv=resize_conv, gn_eps=gn_eps, rngs=rngs)
    self.main_head = SaliencyHead(dim, hidden, **h)
    self.aux_p23 = SaliencyHead(dim, hidden, **h)
    self.aux_p17 = SaliencyHead(dim, hidden, **h)
    self.aux_p11 = SaliencyHead(dim, hidden, **h)

  def __call__(self, features, *, with_aux: bool):
    f5, f11, f17, f23 = features
    p23 = self.proj23(f23)
    p23 = self.refine23(p23 * self.temporal_gate(p23))
    p17 = self.proj17(f17)
    p17 = self.fuse17(jnp.concatenate([p17, _match_size(p23, p17.shape[1:4])], axis=-1))
    p11 = self.proj11(f11)
    p11 = self.fuse11(jnp.concatenate([p11, _match_size(p17, p11.shape[1:4])], axis=-1))
    p5 = self.proj5(f5)
    p5 = self.fuse5(jnp.concatenate([p5, _match_size(p11, p5.shape[1:4])], axis=-1))
    refined = p5
    for block in self.refine3d:
      refined = block(refined)
    out = {"logits": self.main_head(refined)}
    if with_aux:
      out["aux_p23"] = self.aux_p23(p23)
      out["aux_p17"] = self.aux_p17(p17)
      out["aux_p11"] = self.aux_p11(p11)
    return out


class Expert2(nnx.Module):
  def __init__(self, cfg, *, rngs):
    self.neck = Neck(cfg.backbone.embed_dim, cfg.neck_dim, len(cfg.backbone.taps), rngs=rngs)
    self.decoder = Expert2Decoder(
      cfg.neck_dim,
      cfg.decoder_dim,
      output_size=cfg.output_size,
      resize_conv=cfg.get("resize_conv", "auto"),
      gn_eps=cfg.gn_eps,
      rngs=rngs,
    )

  def __call__(self, taps, cls, *, with_aux: bool = False):
    del cls
    out = self.decoder(self.neck(taps), with_aux=with_aux)
    result = {"map": jax.nn.sigmoid(out.pop("logits"))}
    for k, v in out.items():
      result[k] = jax.nn.sigmoid(v)
    return result


EXPERTS = {"expert1": Expert1, "expert2": Expert2}
