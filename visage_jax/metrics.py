"""Saliency metrics, jittable and batched over any leading axes.

Two definitions, named by `variant` (see ../shared/spec/METRICS.md):

- "ntire2026" (default): the NTIRE 2026 challenge scorer (`bench.py`), whose numbers ViSAGE
  reports: population std with a 1e-7 guard, NSS and AUC-Judd over fixation *events*
  (duplicates counted), AUC-Judd's false-positive denominator H·W − U with the scorer's U quirk.
- "mit": the MIT saliency benchmark / DHF1K definitions: sample std, binary fixation maps,
  min-max normalised SIM, no jitter in AUC-Judd, eps 2⁻⁵² in KLD.

Maps are (..., H, W). `fixations` and `negatives` are (..., H, W) integer event counts (a pixel
fixated by three events holds 3). Results are (...): float32, or float64 when x64 is enabled.
A metric that is undefined for a frame (no fixations, a constant map where the definition divides
by its spread) is NaN; `visage_jax.evaluate` excludes and counts those frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("ntire2026", "mit")
FLOAT32_EPS = 1.1920929e-07  # np.finfo(np.float32).eps, the scorer's min-max guard
NTIRE_KLD_EPS = 2.2204e-16
MIT_KLD_EPS = 2.0**-52


def _dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _f(x):
  return jnp.asarray(x).astype(_dtype())


def _check(variant):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _sum(x):
  return jnp.sum(x, axis=(-2, -1))


def _mean(x):
  return jnp.mean(x, axis=(-2, -1))


def _expand(x):
  return x[..., None, None]


def _shift(s):
  """s minus one of its own values: z-scores and correlations do not change, a constant map
  becomes exactly zero (its float32 mean is not exactly its value), and cancellation shrinks."""
  return s - s[..., :1, :1]


def _zscore(s, ddof: int, guard: float):
  s = _shift(s)
  mean = _mean(s)
  centred = s - _expand(mean)
  n = s.shape[-1] * s.shape[-2]
  std = jnp.sqrt(_sum(jnp.square(centred)) / (n - ddof))
  return centred / _expand(std + guard)


def cc(pred, gt, variant: str = "ntire2026"):
  """Linear correlation coefficient between two maps."""
  _check(variant)
  s, g = _f(pred), _f(gt)
  if variant == "ntire2026":
    a, b = _zscore(s, 0, 1e-7), _zscore(g, 0, 1e-7)
    return _sum(a * b) / jnp.sqrt(_sum(a * a) * _sum(b * b) + 1e-7)
  s, g = _shift(s), _shift(g)
  a, b = s - _expand(_mean(s)), g - _expand(_mean(g))
  return _sum(a * b) / jnp.sqrt(_sum(a * a) * _sum(b * b))


def _minmax(x):
  lo = jnp.min(x, axis=(-2, -1), keepdims=True)
  hi = jnp.max(x, axis=(-2, -1), keepdims=True)
  return (x - lo) / (hi - lo)


def sim(pred, gt, variant: str = "ntire2026"):
  """Similarity (histogram intersection) of the two maps as distributions."""
  _check(variant)
  s, g = _f(pred), _f(gt)
  if variant == "ntire2026":
    s = s / _expand(_sum(s) + 1e-7)
    g = g / _expand(_sum(g) + 1e-7)
  else:
    s, g = _minmax(s), _minmax(g)
    s, g = s / _expand(_sum(s)), g / _expand(_sum(g))
  return _sum(jnp.minimum(s, g))


def kld(pred, gt, variant: str = "ntire2026"):
  """KL divergence of the ground truth from the prediction, both divided by their sums."""
  _check(variant)
  eps = NTIRE_KLD_EPS if variant == "ntire2026" else MIT_KLD_EPS
  s, g = _f(pred), _f(gt)
  s, g = s / _expand(_sum(s)), g / _expand(_sum(g))
  return _sum(g * jnp.log(eps + g / (s + eps)))


def nss(pred, fixations, variant: str = "ntire2026"):
  """Normalised scanpath saliency: the z-scored prediction averaged over the fixations."""
  _check(variant)
  s = _f(pred)
  c = _f(fixations)
  if variant == "ntire2026":
    z = _zscore(s, 0, 1e-7)
  else:
    z = _zscore(s, 1, 0.0)
    c = (c > 0).astype(z.dtype)
  n = _sum(c)
  return jnp.where(n > 0, _sum(c * z) / jnp.where(n > 0, n, 1), jnp.nan)


# Fixations are sparse: a frame has tens to a few hundred fixated pixels among 10⁴–10⁶. The rank
# statistics below work on the fixated (and negative) pixels only, gathered into a fixed number
# of slots; a frame with more fixated pixels than slots takes the full sort instead (same numbers).
SPARSE_SLOTS = 512


def _compact(mask, values, slots: int, fills):
  """Per row: the entries of each array in `values` where `mask`, packed into `slots` places
  (padded with the matching entry of `fills`). mask, values: (R, P). Returns (packed…, count)."""
  count = jnp.sum(mask, axis=-1)

  def row(m, *vs):
    idx = jnp.where(m, jnp.cumsum(m) - 1, slots)
    return tuple(
      jnp.full((slots + 1,), f, v.dtype).at[idx].set(v)[:slots] for v, f in zip(vs, fills)
    )

  packed = jax.vmap(row)(mask, *values)
  return (*packed, count)


def _count_at_least_sparse(flat, values):
  """For each row, #{q : flat_q ≥ v} for every v in `values` (R, K), by binary search of every
  pixel into the sorted values and a histogram: O(P·log K) instead of a sort of P."""
  k = values.shape[-1]
  u = jnp.sort(values, axis=-1)
  ranks = jax.vmap(lambda a, q: jnp.searchsorted(a, q, side="right", method="scan"))(u, flat)
  hist = jax.vmap(lambda r: jnp.bincount(r, length=k + 1))(ranks)
  at_least_sorted = jnp.cumsum(hist[:, ::-1], axis=-1)[:, ::-1][:, 1:]  # A(u_k) = Σ_{j≥k} hist_j
  # back to the order of `values`
  pos = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left", method="scan"))(u, values)
  return jnp.take_along_axis(at_least_sorted, pos, axis=-1)


def _sorted_groups(flat, *weights):
  """Sort each row (R, P) by value, carrying `weights` along. Returns (values, weights…,
  group_start, group_end): for each sorted position, the first and last positions of its run of
  equal values."""
  p = flat.shape[-1]
  out = jax.lax.sort((flat, *weights), dimension=1, num_keys=1)
  v, ws = out[0], list(out[1:])
  pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), v.shape)
  first = jnp.concatenate([jnp.ones_like(v[:, :1], bool), v[:, 1:] != v[:, :-1]], axis=1)
  last = jnp.concatenate([v[:, :-1] != v[:, 1:], jnp.ones_like(v[:, :1], bool)], axis=1)
  start = jax.lax.cummax(jnp.where(first, pos, 0), axis=1)
  end = jax.lax.cummin(jnp.where(last, pos, p - 1), axis=1, reverse=True)
  return v, *ws, start, end


def auc_judd(pred, fixations, variant: str = "ntire2026"):
  """AUC-Judd: thresholds at the fixated values, trapezoids over (fp, tp), not tie-aware.

  With events sorted by value, tp_k = k/N and fp_k = (A_k − k)/D. The trapezoid sum over
  (0,0), (fp_1, tp_1), …, (fp_N, tp_N), (1,1) has the closed form
  1 + (N² + A_last − 2·Σ_p c_p·A_p) / (2·N·D), with A_p = #{q : S_q ≥ S_p}, c_p the events at p
  and A_last the A of the lowest fixated value; so no per-event loop is needed.
  ntire2026: c = event counts, D = H·W − U where U is the scorer's `np.unique(F, axis=1)` column
  count (1 when every fixation has y == x, else 2). mit: c = binary map, D = H·W − N.
  """
  _check(variant)
  s = _f(pred)
  c = jnp.asarray(fixations)
  h, w = s.shape[-2], s.shape[-1]
  if variant == "mit":
    c = (c > 0).astype(s.dtype)
  else:
    c = c.astype(s.dtype)
  n = _sum(c)
  lead = s.shape[:-2]
  flat, cflat = s.reshape(-1, h * w), c.reshape(-1, h * w)
  slots = min(SPARSE_SLOTS, h * w)

  def dense(_):
    _, cs, start, _ = _sorted_groups(flat, cflat)
    a = (h * w - start).astype(s.dtype)  # A_p = P − first index of p's run of equal values
    return jnp.sum(cs * a, axis=-1), jnp.max(jnp.where(cs > 0, a, 0), axis=-1)

  def sparse(_):
    vals, cs, _ = _compact(cflat > 0, (flat, cflat), slots, (jnp.inf, 0))
    a = _count_at_least_sparse(flat, vals).astype(s.dtype)
    return jnp.sum(cs * a, axis=-1), jnp.max(jnp.where(cs > 0, a, 0), axis=-1)

  fits = jnp.max(jnp.sum(cflat > 0, axis=-1)) <= slots
  sum_ca, a_last = jax.lax.cond(fits, sparse, dense, None)
  sum_ca, a_last = sum_ca.reshape(lead), a_last.reshape(lead)
  if variant == "ntire2026":
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    off_diagonal = jnp.any((c > 0) & (rows != cols), axis=(-2, -1))
    d = h * w - jnp.where(off_diagonal, 2, 1).astype(s.dtype)
  else:
    d = h * w - n
  n_safe = jnp.where(n > 0, n, 1)
  auc = 1 + (n_safe * n_safe + a_last - 2 * sum_ca) / (2 * n_safe * d)
  return jnp.where(n > 0, auc, jnp.nan)


def sauc(pred, fixations, negatives, variant: str = "ntire2026"):
  """Shuffled AUC: the fixated values against `negatives` (other frames' fixations).

  mit: the MIT benchmark's procedure with the negatives given rather than sampled: the map
  min-max normalised, binary positives and negatives, thresholds 0, 0.1, … up to the largest
  value at either, trapezoids over (0,0) … (1,1).
  ntire2026 (not reported by the challenge): the exact ROC AUC of the fixation events against the
  negative events, weighted by their counts, ties counting one half.
  """
  _check(variant)
  s = _f(pred)
  pos = _f(fixations)
  neg = _f(negatives)
  if variant == "mit":
    spread = jnp.max(s, axis=(-2, -1)) > jnp.min(s, axis=(-2, -1))
    s = _minmax(s)
    pos = (pos > 0).astype(s.dtype)
    neg = (neg > 0).astype(s.dtype)
    npos, nneg = _sum(pos), _sum(neg)
    top = jnp.maximum(
      jnp.max(jnp.where(pos > 0, s, -jnp.inf), axis=(-2, -1)),
      jnp.max(jnp.where(neg > 0, s, -jnp.inf), axis=(-2, -1)),
    )
    steps = jnp.asarray(np.arange(10, -1, -1) / 10.0, s.dtype)  # 1.0, 0.9, …, 0.0
    active = steps <= top[..., None] + 1e-12  # Matlab's 0:0.1:max keeps steps up to max

    def rate(mask, total):
      above = (s[..., None, :, :] >= steps[:, None, None]) & (mask[..., None, :, :] > 0)
      return jnp.sum(above, axis=(-2, -1)).astype(s.dtype) / total[..., None]

    tp = jnp.where(active, rate(pos, npos), 0.0)
    fp = jnp.where(active, rate(neg, nneg), 0.0)
    # Inactive (above-max) thresholds sit at (0, 0), like the curve's own first point.
    zeros = jnp.zeros_like(tp[..., :1])
    ones = jnp.ones_like(tp[..., :1])
    tp = jnp.concatenate([zeros, tp, ones], axis=-1)
    fp = jnp.concatenate([zeros, fp, ones], axis=-1)
    auc = jnp.sum((fp[..., 1:] - fp[..., :-1]) * (tp[..., 1:] + tp[..., :-1]) / 2, axis=-1)
    return jnp.where((npos > 0) & (nneg > 0) & spread, auc, jnp.nan)
  lead = s.shape[:-2]
  hw = s.shape[-1] * s.shape[-2]
  flat, pflat, nflat = s.reshape(-1, hw), pos.reshape(-1, hw), neg.reshape(-1, hw)
  slots = min(SPARSE_SLOTS, hw)

  def dense(_):
    _, pw, nw, start, end = _sorted_groups(flat, pflat, nflat)
    incl = jnp.cumsum(nw, axis=-1)
    excl = incl - nw
    below = jnp.take_along_axis(excl, start, axis=-1)  # negatives strictly below the value
    equal = jnp.take_along_axis(incl, end, axis=-1) - below  # negatives tied with it
    return jnp.sum(pw * (below + 0.5 * equal), axis=-1)

  def sparse(_):
    pv, pw, _ = _compact(pflat > 0, (flat, pflat), slots, (0, 0))
    nv, nw, _ = _compact(nflat > 0, (flat, nflat), slots, (0, 0))
    greater = (pv[:, :, None] > nv[:, None, :]).astype(s.dtype)
    tied = (pv[:, :, None] == nv[:, None, :]).astype(s.dtype)
    pair = pw[:, :, None] * nw[:, None, :]  # padding has weight 0
    return jnp.sum(pair * (greater + 0.5 * tied), axis=(-2, -1))

  fits = jnp.maximum(jnp.max(jnp.sum(pflat > 0, -1)), jnp.max(jnp.sum(nflat > 0, -1))) <= slots
  wins = jax.lax.cond(fits, sparse, dense, None)
  total_p, total_n = jnp.sum(pflat, axis=-1), jnp.sum(nflat, axis=-1)
  ok = (total_p > 0) & (total_n > 0)
  auc = jnp.where(ok, wins / jnp.where(ok, total_p * total_n, 1), jnp.nan)
  return auc.reshape(lead)


# ------------------------------------------------------------------------------------------------
# The challenge's reading of a map, for scoring a prediction exactly as the challenge did.


def _cv_linear_weights(in_size: int, out_size: int):
  """OpenCV INTER_LINEAR along one axis: half-pixel centres, edge clamp, two taps (no
  antialiasing when shrinking). Returns (index0, index1, w0, w1).

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


def cv2_resize_linear(x, out_hw: tuple[int, int]):
  """cv2.resize(x, (W, H), interpolation=INTER_LINEAR) for float maps (..., H, W)."""
  x = _f(x)
  out_h, out_w = out_hw
  for axis, n in ((-1, out_w), (-2, out_h)):
    if x.shape[axis] == n:
      continue
    i0, i1, w0, w1 = _cv_linear_weights(x.shape[axis], n)
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = n
    x = a * jnp.asarray(w0, x.dtype).reshape(shape) + b * jnp.asarray(w1, x.dtype).reshape(shape)
  return x


def ntire2026_preprocess(pred, gt_shape, *, channels: bool | None = None):
  """A prediction as the challenge scorer reads it: channel mean, min-max normalisation
  (x − min)/(max − min + float32 eps), then OpenCV bilinear resize to `gt_shape` (H, W).

  pred: (..., H, W) or (..., H, W, C); `channels=None` treats a trailing axis of 1, 3 or 4 on an
  input of three or more axes as colour. Apply it to the ground-truth map too (with its own shape)
  to read it as the scorer does.
  """
  x = _f(pred)
  if channels is None:
    channels = x.ndim >= 3 and x.shape[-1] in (1, 3, 4)
  if channels:
    x = jnp.mean(x, axis=-1)
  lo = jnp.min(x, axis=(-2, -1), keepdims=True)
  hi = jnp.max(x, axis=(-2, -1), keepdims=True)
  x = (x - lo) / (hi - lo + FLOAT32_EPS)
  return cv2_resize_linear(x, tuple(gt_shape[-2:]))
