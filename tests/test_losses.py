"""The loss and its gradient against a float64 numpy version of docs/model.md §8."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.visage import get_config
from visage_jax.metrics.losses import expert2_aux_loss, vsp_loss

CFG = get_config("tiny").loss


def ref_loss(pred, target, fix=None, with_bce=True, kl_w=10.0, cc_w=2.0, sim_w=1.0, alpha=3.0):
  """float64, written from the text of §8: per frame over H·W, then the mean over frames."""
  p = np.clip(pred.astype(np.float64), 1e-7, 1 - 1e-7).reshape(-1, pred.shape[-2] * pred.shape[-1])
  g = np.clip(target.astype(np.float64), 0, 1).reshape(p.shape)
  pn = p / (p.sum(1, keepdims=True) + 1e-7)
  gn = g / (g.sum(1, keepdims=True) + 1e-7)
  kl = np.sum(gn * np.log(gn / (pn + 1e-7) + 1e-7), axis=1).mean()
  pc, gc = p - p.mean(1, keepdims=True), g - g.mean(1, keepdims=True)
  cc = (np.sum(pc * gc, 1) / np.sqrt(np.sum(pc**2, 1) * np.sum(gc**2, 1) + 1e-7)).mean()
  sim = np.sum(np.minimum(pn, gn), 1).mean()
  total = kl_w * kl + cc_w * (1 - cc) + sim_w * (1 - sim)
  if with_bce:
    bce = -(g * np.maximum(np.log(p), -100) + (1 - g) * np.maximum(np.log(1 - p), -100))
    if fix is not None:
      bce = bce * (1 + alpha * fix.reshape(p.shape))
    total += bce.mean()
  return total


def numeric_grad(f, x, h=1e-6):
  g = np.zeros_like(x)
  it = np.nditer(x, flags=["multi_index"])
  for _ in it:
    i = it.multi_index
    xp, xm = x.copy(), x.copy()
    xp[i] += h
    xm[i] -= h
    g[i] = (f(xp) - f(xm)) / (2 * h)
  return g


def make(seed, shape=(2, 3, 8, 10)):
  rng = np.random.default_rng(seed)
  pred = rng.uniform(0.02, 0.98, shape)
  target = rng.uniform(0, 1, shape) ** 3
  target[0, 0] = 0.0  # an empty ground-truth frame
  fix = np.zeros(shape)
  idx = tuple(rng.integers(0, n, 12) for n in shape)
  np.add.at(fix, idx, 1.0)
  return pred, target, fix


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("with_fix", [False, True])
def test_loss_and_gradient_match_numpy(seed, with_fix):
  pred, target, fix = make(seed)
  f = fix if with_fix else None
  want = ref_loss(pred, target, f)

  def loss(p):
    return vsp_loss(
      p,
      jnp.asarray(target, jnp.float32),
      None if f is None else jnp.asarray(f, jnp.float32),
      cfg=CFG,
    )[0]

  got, grad = jax.value_and_grad(loss)(jnp.asarray(pred, jnp.float32))
  assert abs(float(got) - want) <= 1e-5 * max(1.0, abs(want)), (float(got), want)
  ref_grad = numeric_grad(lambda p: ref_loss(p, target, f), pred)
  err = np.max(np.abs(np.asarray(grad, np.float64) - ref_grad))
  assert err <= 1e-5, err


def test_aux_loss_is_weighted_dense_loss_without_bce():
  pred, target, _ = make(7)
  maps = {
    k: jnp.asarray(np.clip(pred * s, 0.01, 0.99), jnp.float32)
    for k, s in (("p23", 0.9), ("p17", 1.0), ("p11", 1.1))
  }
  got, parts = expert2_aux_loss(maps, jnp.asarray(target, jnp.float32), cfg=CFG)
  want = sum(
    w * ref_loss(np.asarray(maps[k]), target, None, with_bce=False)
    for k, w in (("p23", 0.10), ("p17", 0.15), ("p11", 0.20))
  )
  assert abs(float(got) - want) <= 1e-5 * max(1, abs(want))
  assert set(parts) == {"aux_p23", "aux_p17", "aux_p11"}


def test_frame_mask_excludes_padding():
  pred, target, fix = make(3)
  mask = np.ones(pred.shape[:2], bool)
  mask[1, 2] = False
  got = vsp_loss(
    jnp.asarray(pred), jnp.asarray(target), jnp.asarray(fix), cfg=CFG, frame_mask=jnp.asarray(mask)
  )[0]
  keep = mask.reshape(-1)
  flat = lambda x: x.reshape(-1, *x.shape[2:])[keep]
  want = ref_loss(flat(pred), flat(target), flat(fix))
  assert abs(float(got) - want) <= 1e-5 * max(1, abs(want))
