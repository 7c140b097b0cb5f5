"""The original's training loss (VSPLoss, docs/model.md §8), per frame then averaged.

    total = kl_w·KL + cc_w·(1 − CC) + sim_w·(1 − SIM) + bce_w·BCE(weighted by 1 + α·F)

Maps are (..., H, W) probabilities; statistics are per frame over H·W and averaged over every
leading axis, or over the frames where `frame_mask` is true (the padded tail of a window is not
a frame).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-7


def _frame_mean(x, frame_mask):
  if frame_mask is None:
    return jnp.mean(x)
  m = frame_mask.astype(x.dtype)
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1)


def _sum(x):
  return jnp.sum(x, axis=(-2, -1), keepdims=True)


def dense_terms(pred, target):
  """Per-frame KL, CC and SIM of the clamped maps: three (...) arrays."""
  p = jnp.clip(pred, _EPS, 1 - _EPS)
  g = jnp.clip(target, 0.0, 1.0)
  pn = p / (_sum(p) + _EPS)
  gn = g / (_sum(g) + _EPS)
  kl = jnp.sum(gn * jnp.log(gn / (pn + _EPS) + _EPS), axis=(-2, -1))
  pc = p - jnp.mean(p, axis=(-2, -1), keepdims=True)
  gc = g - jnp.mean(g, axis=(-2, -1), keepdims=True)
  cc = jnp.sum(pc * gc, axis=(-2, -1)) / jnp.sqrt(
    jnp.sum(pc * pc, axis=(-2, -1)) * jnp.sum(gc * gc, axis=(-2, -1)) + _EPS
  )
  sim = jnp.sum(jnp.minimum(pn, gn), axis=(-2, -1))
  return kl, cc, sim


def bce_map(pred, target):
  """PyTorch's binary cross-entropy on the clamped prediction, logs clamped at −100."""
  p = jnp.clip(pred, _EPS, 1 - _EPS)
  g = jnp.clip(target, 0.0, 1.0)
  return -(g * jnp.maximum(jnp.log(p), -100.0) + (1 - g) * jnp.maximum(jnp.log1p(-p), -100.0))


def nss_term(pred, target, fixations):
  """The original's NSS term (weight 0 in its recipe): z-scored prediction (detached sample
  statistics) averaged over fixations weighted by the ground truth; frames without fixations
  excluded. Returns (per-frame NSS, validity)."""
  n = pred.shape[-1] * pred.shape[-2]
  mean = jax.lax.stop_gradient(jnp.mean(pred, axis=(-2, -1), keepdims=True))
  var = jnp.sum(jnp.square(pred - mean), axis=(-2, -1), keepdims=True) / (n - 1)
  std = jax.lax.stop_gradient(jnp.sqrt(var))
  z = (pred - mean) / (std + _EPS)
  w = fixations * jax.lax.stop_gradient(target)
  score = jnp.sum(z * w, axis=(-2, -1)) / (jnp.sum(w, axis=(-2, -1)) + _EPS)
  return score, jnp.sum(fixations, axis=(-2, -1)) > 0.5


def vsp_loss(pred, target, fixations=None, *, cfg, frame_mask=None, with_bce: bool = True):
  """(total, parts). pred, target: (..., H, W); fixations: the max-filtered fixation map or None.

  `with_bce=False` (and no fixations) is the original's `dense_only_loss`, used for Expert 2's
  auxiliary heads.
  """
  kl, cc, sim = dense_terms(pred, target)
  parts = {
    "kl": _frame_mean(kl, frame_mask),
    "cc": _frame_mean(cc, frame_mask),
    "sim": _frame_mean(sim, frame_mask),
  }
  total = (
    cfg.kl_weight * parts["kl"]
    + cfg.cc_weight * (1 - parts["cc"])
    + cfg.sim_weight * (1 - parts["sim"])
  )
  if with_bce and cfg.bce_weight > 0:
    bce = bce_map(pred, target)
    if fixations is not None:
      bce = bce * (1 + cfg.fixation_alpha * fixations)
    per_frame = jnp.mean(bce, axis=(-2, -1))
    parts["bce"] = _frame_mean(per_frame, frame_mask)
    total = total + cfg.bce_weight * parts["bce"]
  if fixations is not None and cfg.nss_weight > 0:
    score, valid = nss_term(pred, target, fixations)
    m = valid if frame_mask is None else valid & frame_mask
    parts["nss"] = jnp.sum(jnp.where(m, score, 0)) / jnp.maximum(jnp.sum(m), 1)
    total = total - cfg.nss_weight * parts["nss"]
  parts["total"] = total
  return total, parts


def expert2_aux_loss(aux_maps: dict, target, *, cfg, frame_mask=None):
  """Σ_head w_head · L(aux map) with L the loss without BCE and without fixations."""
  total = 0.0
  parts = {}
  for name, weight in cfg.aux_weights.items():
    loss, _ = vsp_loss(aux_maps[name], target, None, cfg=cfg, frame_mask=frame_mask, with_bce=False)
    parts[f"aux_{name}"] = loss
    total = total + weight * loss
  return total, parts
