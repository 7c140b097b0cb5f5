"""FLOP counts and peak FLOP/s for MFU estimates (training progress bar and benchmarks).

XLA's cost analysis is not used for the model's FLOPs: it counts a `lax.scan` body once and
custom calls (cuDNN attention) not at all. We count the backbone's matmuls instead; the decoders
(about 1 % at 6B) are left out, so MFU is a slight underestimate.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from visage_jax.models.internvideo2 import active_lora_targets, num_tokens

# Dense bf16 peak per chip, TFLOP/s, matched against `device_kind`.
NOMINAL_BF16_TFLOPS = {
  "H100": 989.0,
  "H200": 989.0,
  "B200": 2250.0,
  "A100": 312.0,
  "L40S": 362.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v6": 918.0,
}


def _block_flops(cfg, with_lora: bool) -> tuple[float, float, float]:
  """Per block and clip: the projections' matmul FLOPs (2·12·D²·N), the attention core's
  (4·N²·D), and the acting LoRA adapters' (2·N·r·(d_in + d_out) for each)."""
  b = cfg.model.backbone
  n = num_tokens(b)
  d, hidden = b.embed_dim, int(b.embed_dim * b.mlp_ratio)
  linear = 2 * n * (3 * d * d + d * d + 2 * d * hidden)
  attention = 4 * n * n * d
  widths = {"qkv": d + 3 * d, "proj": 2 * d, "fc1": d + hidden, "fc2": hidden + d}
  lora = 0
  if with_lora:
    lora = sum(2 * n * cfg.model.lora.rank * widths[t] for t in active_lora_targets(cfg.model))
  return float(linear), float(attention), float(lora)


def backbone_flops(cfg, batch: int, experts: int | None = None) -> float:
  """Matmul FLOPs of one backbone forward for `batch` clips and `experts` LoRA branches (default:
  the config's experts): 2·(12·D²)·N per block for the projections and 4·N²·D for attention, over
  the blocks up to the last tap (the adapters, ~1 %, left out)."""
  linear, attention, _ = _block_flops(cfg, with_lora=False)
  b = cfg.model.backbone
  e = max(len(cfg.model.experts), 1) if experts is None else experts
  return (linear + attention) * (b.taps[-1] + 1) * batch * e


def train_step_flops(cfg, global_batch: int) -> float:
  """Model FLOPs of one training step of one expert, per block and clip, summed over the blocks
  up to the last tap: stage 1 the forward (projections L, attention A); stage 2 also the adapters'
  forward (R), the backward through the activations (L + 2·A + R: the frozen weights get no
  gradient, the attention core's backward is twice its forward) and the adapters' weight
  gradients (R): 2·L + 3·A + 3·R. Recomputation under remat is not counted (the usual MFU
  convention), nor the decoders (about 1 % at 6B)."""
  linear, attention, lora = _block_flops(cfg, with_lora=cfg.train.stage == 2)
  per_block = linear + attention
  if cfg.train.stage == 2:
    per_block = 2 * linear + 3 * attention + 3 * lora
  return per_block * (cfg.model.backbone.taps[-1] + 1) * global_batch


def nominal_peak_flops(device=None) -> float | None:
  """The nominal dense bf16 FLOP/s of `device` (default: the first), or None if unknown."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for k, v in NOMINAL_BF16_TFLOPS.items():
    if k.lower() in kind.lower():
      return v * 1e12
  return None


def matmul_flops(n: int = 1024, iters: int = 5, dtype=jnp.float32, device=None) -> float:
  """FLOP/s of a plain n×n matmul on one device, measured now."""
  device = device or jax.devices()[0]
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), dtype), device)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(iters):
    c = f(a, b)
  c.block_until_ready()
  return 2 * n**3 * iters / (time.perf_counter() - t0)


def peak_flops(configured: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the figure comes from) for MFU: `configured` if set, the
  nominal figure for known accelerators, else (CPU) a float32 matmul measured now, shared by the
  process's devices (emulated CPU devices share the same cores)."""
  if configured:
    return float(configured), "configured"
  nominal = nominal_peak_flops()
  if nominal:
    return nominal, "nominal bf16"
  return matmul_flops() / jax.local_device_count(), "measured f32 matmul"
