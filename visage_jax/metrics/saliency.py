"""Saliency metrics, jittable and batched over any leading axes.

Two families, named by `variant` (see docs/metrics.md), and the original's own training-time
numbers:

- "ntire2026" (default): the NTIRE 2026 challenge scorer (`bench.py`), whose numbers ViSAGE
  reports: population std with a 1e-7 guard, NSS and AUC-Judd over fixation *events*
  (duplicates counted), AUC-Judd's false-positive denominator H·W − U with the scorer's U quirk.
- "mit": the MIT saliency benchmark / DHF1K MATLAB code as it runs by default: sample std,
  binary fixation maps, SIM and KLD with its `if any(map(:))` guards, eps 2⁻⁵² in KLD, AUC-Judd
  as the expected value of `AUC_Judd.m` with its default jitter (`jitter=False`: without), sAUC
  with `AUC_shuffled.m`'s 0.1 threshold steps.
- "original" (CC, SIM and NSS only): what the original training scripts validate with
  (`calc_cc_sim_batch`, `torch_nss`): PyTorch's sample std with 1e-7 guards, SIM as the
  challenge's, and NSS weighted by the fixation map it is given (the trainer gives the 3×3
  max-filtered counts, as the original builds it).

Maps are (..., H, W) and non-negative; `fixations` and `negatives` are (..., H, W) integer event
counts (a pixel fixated by three events holds 3). The two arguments of a metric must have equal
shapes: nothing is broadcast (resize explicitly, e.g. with `cv2_resize_linear`). Called on
concrete arrays, a metric raises a `ValueError` naming the argument for unequal shapes, negative
or non-finite maps and negative or non-integer counts; inside `jax.jit`, where values cannot be
checked, such a frame's result is NaN instead. Results are (...): float32, or float64 when x64 is
enabled. A metric that is undefined for a frame (no fixations, a constant map where the
definition divides by its spread) is NaN; `visage_jax.evaluation.evaluate` excludes and counts
those frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from visage_jax.metrics import maps

VARIANTS = ("ntire2026", "mit")  # the scoring families: every metric, in metrics.json
ORIGINAL = "original"  # the original's training-time CC, SIM and NSS
FLOAT32_EPS = 1.1920929e-07  # np.finfo(np.float32).eps, the scorer's min-max guard
NTIRE_KLD_EPS = 2.2204e-16
MIT_KLD_EPS = 2.0**-52


def _dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _f(x):
  return jnp.asarray(x).astype(_dtype())


def _check(variant, known=VARIANTS):
  if variant not in known:
    raise ValueError(f"variant must be one of {known}, got {variant!r}")


def _dtype_of(x):
  return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _value_problem(name: str, x, counts: bool) -> str | None:
  """What is wrong with a concrete map (or count array), if anything."""
  a = np.asarray(x)
  if counts:
    bad = "negative counts" if a.size and a.min() < 0 else None
  elif not np.all(np.isfinite(a)):
    bad = "non-finite values"
  else:
    bad = f"negative values (min {a.min():.4g})" if a.size and a.min() < 0 else None
  return f"{name}: {bad}" if bad else None


def _validate(pred, maps: dict | None = None, counts: dict | None = None):
  """Check a metric's arguments. Shapes must equal pred's (no broadcasting) and counts must have
  an integer dtype, always; on concrete values maps must be finite and non-negative and counts
  non-negative. Each failure is a ValueError naming the argument. Returns None when the values
  were checked, or, for traced values, a (...) bool that is false on frames that would fail (the
  metric gives NaN there)."""
  maps, counts = maps or {}, counts or {}
  shape = tuple(np.shape(pred))
  for name, x in {**maps, **counts}.items():
    if tuple(np.shape(x)) != shape:
      raise ValueError(
        f"{name}: shape {tuple(np.shape(x))} differs from pred's {shape}; metrics never "
        "broadcast (resize explicitly)"
      )
  for name, x in counts.items():
    if _dtype_of(x).kind not in "biu":
      raise ValueError(
        f"{name}: counts must be integers, got {_dtype_of(x)} (a float map may be a density: "
        "give a binary fixation map as bool or integers, e.g. .astype(np.int32))"
      )
  every = [("pred", pred, False), *[(n, x, False) for n, x in maps.items()]]
  every += [(n, x, True) for n, x in counts.items()]
  if not any(isinstance(x, jax.core.Tracer) for _, x, _ in every):
    for name, x, is_counts in every:
      problem = _value_problem(name, x, is_counts)
      if problem:
        raise ValueError(problem)
    return None
  ok = True
  for _, x, is_counts in every:
    x = jnp.asarray(x)
    good = x >= 0 if is_counts else jnp.isfinite(x) & (x >= 0)
    ok = ok & jnp.all(good, axis=(-2, -1))
  return ok


def _guard(result, ok):
  return result if ok is None else jnp.where(ok, result, jnp.nan)


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


def _zscore(s, ddof: int, guard: float, shift: bool = True):
  s = _shift(s) if shift else s
  mean = _mean(s)
  centred = s - _expand(mean)
  n = s.shape[-1] * s.shape[-2]
  std = jnp.sqrt(_sum(jnp.square(centred)) / (n - ddof))
  return centred / _expand(std + guard)


def cc(pred, gt, variant: str = "ntire2026"):
  """Linear correlation coefficient between two maps."""
  _check(variant, (*VARIANTS, ORIGINAL))
  ok = _validate(pred, {"gt": gt})
  s, g = _f(pred), _f(gt)
  if variant != "mit":
    ddof, shift = (0, True) if variant == "ntire2026" else (1, False)
    a, b = _zscore(s, ddof, 1e-7, shift), _zscore(g, ddof, 1e-7, shift)
    return _guard(_sum(a * b) / jnp.sqrt(_sum(a * a) * _sum(b * b) + 1e-7), ok)
  s, g = _shift(s), _shift(g)
  a, b = s - _expand(_mean(s)), g - _expand(_mean(g))
  return _guard(_sum(a * b) / jnp.sqrt(_sum(a * a) * _sum(b * b)), ok)


def _minmax(x):
  lo = jnp.min(x, axis=(-2, -1), keepdims=True)
  hi = jnp.max(x, axis=(-2, -1), keepdims=True)
  return (x - lo) / (hi - lo)


def _if_any(x, normalised):
  """MATLAB's `if any(map(:))`: an all-zero map is kept as it is."""
  return jnp.where(jnp.any(x != 0, axis=(-2, -1), keepdims=True), normalised, x)


def sim(pred, gt, variant: str = "ntire2026"):
  """Similarity (histogram intersection) of the two maps as distributions. mit: each map min-max
  normalised and divided by its sum only if it is not all zero (`similarity.m`): an all-zero
  map scores 0, a constant non-zero one NaN. original: the challenge's."""
  _check(variant, (*VARIANTS, ORIGINAL))
  ok = _validate(pred, {"gt": gt})
  s, g = _f(pred), _f(gt)
  if variant != "mit":
    s = s / _expand(_sum(s) + 1e-7)
    g = g / _expand(_sum(g) + 1e-7)
  else:

    def distribution(x):
      m = _minmax(x)
      return _if_any(x, m / _expand(_sum(m)))

    s, g = distribution(s), distribution(g)
  return _guard(_sum(jnp.minimum(s, g)), ok)


def kld(pred, gt, variant: str = "ntire2026"):
  """KL divergence of the ground truth from the prediction, both divided by their sums (mit:
  only if not all zero, as `KLdiv.m`)."""
  _check(variant)
  ok = _validate(pred, {"gt": gt})
  s, g = _f(pred), _f(gt)
  if variant == "ntire2026":
    eps = NTIRE_KLD_EPS
    s, g = s / _expand(_sum(s)), g / _expand(_sum(g))
  else:
    eps = MIT_KLD_EPS
    s, g = _if_any(s, s / _expand(_sum(s))), _if_any(g, g / _expand(_sum(g)))
  return _guard(_sum(g * jnp.log(eps + g / (s + eps))), ok)


def nss(pred, fixations, variant: str = "ntire2026"):
  """Normalised scanpath saliency: the z-scored prediction averaged over the fixations (original:
  weighted by the fixation map, sample std)."""
  _check(variant, (*VARIANTS, ORIGINAL))
  ok = _validate(pred, counts={"fixations": fixations})
  s = _f(pred)
  c = _f(fixations)
  if variant == ORIGINAL:
    z = _zscore(s, 1, 1e-7, shift=False)
    n = _sum(c)
    return _guard(jnp.where(n > 0, _sum(z * c) / (n + 1e-7), jnp.nan), ok)
  if variant == "ntire2026":
    z = _zscore(s, 0, 1e-7)
  else:
    z = _zscore(s, 1, 0.0)
    c = (c > 0).astype(z.dtype)
  n = _sum(c)
  return _guard(jnp.where(n > 0, _sum(c * z) / jnp.where(n > 0, n, 1), jnp.nan), ok)


# Fixations are sparse: a frame has tens to a few hundred fixated pixels among 10⁴–10⁶. The rank
# statistics below work on the fixated (and negative) pixels only, gathered into a fixed number
# of slots; a frame with more fixated pixels than slots takes the full sort instead (same numbers).
SPARSE_SLOTS = 512


def _compact(mask, values, slots: int, fills):
  """Per row: the entries of each array in `values` where `mask`, packed into `slots` places
  (padded with the matching entry of `fills`). mask, values: (R, P). Returns (packed…, count)."""
  count = jnp.sum(mask, axis=-1)

  def row(m, *vs):
    # the k-th entry where `mask` is the first position whose running count reaches k: a binary
    # search of each slot into the running count (a scatter of every position, most of them to
    # a spare slot, took twice as long on a CPU and contends for one address on a GPU)
    seen = jnp.cumsum(m, dtype=jnp.int32)
    at = jnp.searchsorted(seen, jnp.arange(1, slots + 1, dtype=jnp.int32), side="left")
    found = at < m.shape[0]
    at = jnp.minimum(at, m.shape[0] - 1)
    return tuple(jnp.where(found, v[at], jnp.asarray(f, v.dtype)) for v, f in zip(vs, fills))

  packed = jax.vmap(row)(mask, *values)
  return (*packed, count)


def _count_sparse(flat, values):
  """For each row, #{q : flat_q ≥ v} for every v in `values` (R, K); by one binary search of every
  pixel into the sorted values and histograms: O(P·log K) instead of a sort of P."""
  k = values.shape[-1]
  u = jnp.sort(values, axis=-1)
  ranks = jax.vmap(lambda a, q: jnp.searchsorted(a, q, side="right", method="scan"))(u, flat)

  def at_position(hist, side):  # hist (R, K + 1) over ranks → per value, by its place in u
    pos = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side=side, method="scan"))(u, values)
    return jnp.take_along_axis(hist, pos, axis=-1)

  hist = jax.vmap(lambda r: jnp.bincount(r, length=k + 1))(ranks)
  beyond = jnp.cumsum(hist[:, ::-1], axis=-1)[:, ::-1][:, 1:]  # #{q : rank_q > j} = #{q ≥ u_j}
  return at_position(beyond, "left")


def _per_level(q, values):
  """Per row of grey levels q, int (R, P) in 0…255: the sum of `values` (R, P) at each level,
  (R, 256)."""
  rows = jnp.arange(q.shape[0])[:, None] * 256
  return jax.ops.segment_sum(values.ravel(), (q + rows).ravel(), q.shape[0] * 256).reshape(-1, 256)


def _level_sums(levels, weights, jitter: bool):
  """`_judd_sums` of 8-bit maps (R rows of P pixels, grey levels 0…255) and weights (R, P), by
  level: the pixels at or above a pixel's level are those of its level and above, so every sum
  runs over the 256 levels of two histograms (pixels and weights at each level), not over P."""
  lv = jnp.asarray(levels).astype(jnp.int32).reshape(weights.shape)
  count, weight = _per_level(lv, jnp.ones_like(lv)), _per_level(lv, weights)
  at_least = jnp.cumsum(count[:, ::-1], axis=-1)[:, ::-1]
  return _judd_sums(jnp.arange(256.0), weight, at_least, at_least - count, jitter)


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


def _judd_sums(values, weights, at_least, greater, jitter: bool):
  """(Σ_p c_p·A_p, A_last) over fixated pixels p (weights c_p > 0), where A counts the pixels
  at or above p's value. With `jitter`, their expectations when ties are broken at random: p
  lands uniformly within its tie group of g = at_least − greater pixels, so E[A_p] = greater +
  (g + 1)/2; the lowest fixated group, holding f fixated pixels, ends at greater + the largest
  of f random places among g, whose mean is f·(g + 1)/(f + 1)."""
  dt = weights.dtype
  at_least, greater = at_least.astype(dt), greater.astype(dt)
  fixated = weights > 0
  if not jitter:
    return jnp.sum(weights * at_least, axis=-1), jnp.max(jnp.where(fixated, at_least, 0), axis=-1)
  a = (at_least + greater + 1) / 2
  low = jnp.min(jnp.where(fixated, values, jnp.inf), axis=-1, keepdims=True)
  lowest = fixated & (values == low)
  f = jnp.sum(jnp.where(lowest, weights, 0), axis=-1)
  g_low = jnp.max(jnp.where(lowest, at_least - greater, 0), axis=-1)
  greater_low = jnp.max(jnp.where(lowest, greater, 0), axis=-1)
  return jnp.sum(weights * a, axis=-1), greater_low + f * (g_low + 1) / (f + 1)


def auc_judd(
  pred, fixations, variant: str = "ntire2026", *, jitter: bool | None = None, levels=None
):
  """AUC-Judd: thresholds at the fixated values, trapezoids over (fp, tp).

  With fixated pixels sorted by value, tp_k = k/N and fp_k = (A_k − k)/D (A_k: pixels at or
  above the k-th). The trapezoid sum over (0,0), (fp_1, tp_1), …, (fp_N, tp_N), (1,1) has the
  closed form 1 + (N² + A_last − 2·Σ_p c_p·A_p) / (2·N·D), with c_p the events at p and A_last
  the A of the lowest fixated value; so no per-event loop is needed.
  ntire2026: not tie-aware, c = event counts, D = H·W − U where U is the scorer's
  `np.unique(F, axis=1)` column count (1 when every fixation has y == x, else 2).
  mit (`AUC_Judd.m`): c = binary map, D = H·W − N. Its default `jitter = 1` adds rand/1e7 to the
  map, which breaks ties at random and also reorders distinct values closer than 1e-7 (a
  softmax-like map's long tail); the AUC is linear in the A's, so `jitter=None` (the default, as
  True) gives the expected value of what the code returns: exact for ties and for E[A_p], and
  within 1e-6 for E[A_last] (`_expected_last`; no random draw). `jitter=False` gives its value
  without jitter (NaN for a constant map, as the code returns).

  `levels`: optionally the 8-bit map (…, H, W) (grey levels 0…255, int or float) of which `pred`
  is a strictly increasing function, as a read submission is of its PNG's levels: the pixels at
  or above each value are then counted from its histogram (the same counts, in O(H·W)) instead
  of by a search of the fixated values. Its distinct levels must map to values further apart
  than the jitter (a min-max normalised 8-bit map's are 1/255 apart).
  """
  _check(variant)
  if jitter is None:
    jitter = variant == "mit"
  if jitter and variant != "mit":
    raise ValueError("jitter: only the mit variant (AUC_Judd.m) jitters the map")
  ok = _validate(pred, counts={"fixations": fixations})
  s = _f(pred)
  c = jnp.asarray(fixations)
  c = ((c > 0) if variant == "mit" else c).astype(s.dtype)
  n = _sum(c)
  sum_ca, a_last = _judd_pixel_sums(s, c, levels, jitter)
  d = _judd_negatives(c, n, variant)
  n_safe = jnp.where(n > 0, n, 1)
  auc = 1 + (n_safe * n_safe + a_last - 2 * sum_ca) / (2 * n_safe * d)
  defined = n > 0
  if variant == "mit" and not jitter:
    defined &= jnp.max(s, axis=(-2, -1)) > jnp.min(s, axis=(-2, -1))
  return _guard(jnp.where(defined, auc, jnp.nan), ok)


def _judd_pixel_sums(s, c, levels, jitter: bool):
  """AUC-Judd's Σ_p c_p·A_p and A_last over the last two axes (see `auc_judd`): from the 8-bit
  `levels`' histogram when given, else by a search of the fixated values when they fit
  `SPARSE_SLOTS`, else by sorting the whole map."""
  h, w = s.shape[-2], s.shape[-1]
  flat, cflat = s.reshape(-1, h * w), c.reshape(-1, h * w)
  slots = min(SPARSE_SLOTS, h * w)

  def dense(_):
    v, cs, start, end = _sorted_groups(flat, cflat)
    if not jitter:
      return _judd_sums(v, cs, h * w - start, h * w - 1 - end, False)
    lowest, _ = _compact(cs > 0, (v,), slots, (jnp.inf,))
    return _jittered_sums(v, cs, jnp.sum(cs * (h * w - start), axis=-1), (v, cs), lowest)

  def sparse(_):
    vals, cs, _ = _compact(cflat > 0, (flat, cflat), slots, (jnp.inf, 0))
    at_least = _count_sparse(flat, vals)
    if not jitter:
      return _judd_sums(vals, cs, at_least, at_least, False)
    fixated = jax.lax.sort((vals, cs), num_keys=1)
    return _jittered_sums(flat, cflat, jnp.sum(cs * at_least, axis=-1), fixated, fixated[0])

  if levels is not None:
    sum_ca, a_last = _level_sums(levels, cflat, jitter)
  else:
    fits = jnp.max(jnp.sum(cflat > 0, axis=-1)) <= slots
    sum_ca, a_last = jax.lax.cond(fits, sparse, dense, None)
  return sum_ca.reshape(s.shape[:-2]), a_last.reshape(s.shape[:-2])


# AUC_Judd.m's jitter, rand/1e7, also reorders distinct values closer than 1e-7 (the long flat
# tails of softmax-like maps lie far closer). Its expectations there, exactly for E[A_p] and by
# JITTER_STEPS trapezoids for E[A_last] (the AUC's error below 1e-6; docs/metrics.md):
JITTER = 1e-7
JITTER_STEPS = 512
# Distances in JITTERs without the values' magnitude: each value is taken from the start of its
# bucket, a span of 2·BUCKET (a power of two, so exact in any float format) starting at an even
# multiple of BUCKET, or in the second alignment at an odd one. A window of one JITTER < BUCKET
# lies whole in a bucket of one of the two alignments, where the distance of two of its values
# is the difference of their offsets, each below 2·BUCKET/JITTER ≈ 2.4.
BUCKET = 2.0**-23


def _jittered_sums(flat, cflat, sum_at_least, fixated, lowest):
  """(Σ_p c_p·E[A_p], E[A_last]) under AUC_Judd.m's jitter, over (R, P) pixels `flat` with
  weights `cflat`. `sum_at_least`: (R,) Σ_p c_p·#{q : flat_q ≥ flat_p}; `fixated`: the fixated
  values (R, K) ascending with their weights (+inf, 0 padded); `lowest`: the lowest fixated
  values so (R, L). Each pair of values at most a JITTER apart moves A_p from the count of
  pixels at or above p (p itself taken back by half)."""
  pairs = jnp.sum(_closer_pairs(*fixated, flat), axis=-1)
  sum_ca = sum_at_least.astype(flat.dtype) + jnp.sum(cflat, axis=-1) / 2 + pairs
  return sum_ca, _expected_last(flat, cflat, lowest)


def _offsets(v, alignment):
  """(v − the start of its bucket) / JITTER for buckets at even (alignment 0) or odd (1)
  multiples of BUCKET; 0 for infinite v."""
  start = (2 * jnp.floor((v / BUCKET - alignment) / 2) + alignment) * BUCKET
  return jnp.where(jnp.isfinite(v), (v - start) / JITTER, 0)


def _same_bucket(a, b):
  """Whether a ≤ b lie in one bucket of the even alignment (else they do in the odd one)."""
  return jnp.floor(a / (2 * BUCKET)) == jnp.floor(b / (2 * BUCKET))


def _beyond(x, d):
  """x + d rounded, then moved one float further from x where it rounded towards x: the floats
  strictly between x and the result are those strictly between x and the exact x + d (the
  float32 grid near 1 is as coarse as JITTER)."""
  t = x + d
  moved = t - x  # TwoSum: the exact x + d − t, of which only the sign is used
  error = (x - (t - moved)) + (d - moved)
  towards_x = error * d > 0
  return jnp.where(towards_x, jnp.nextafter(t, jnp.full_like(t, jnp.inf * d)), t)


def _closer_pairs(u, weights, x):
  """For each query x (R, Q), Σ_p weight_p · (P(S_x > S_p) − [x ≥ u_p]) over the sorted u (R, K),
  S the jittered values. For values y JITTERs apart (0 ≤ y < 1), the chance that the higher one
  stays higher is 1 − (1 − y)²/2 (one half for a tie); Σ weight·(1 ± (ρ_x − ρ_p))² over a window
  comes from running sums of weight·ρ_pⁱ (i = 0, 1, 2) in the window's bucket alignment."""
  find = jax.vmap(lambda a, q, side: jnp.searchsorted(a, q, side=side, method="scan"), (0, 0, None))
  by_alignment = {}
  for alignment in (0, 1):
    rho = _offsets(u, alignment)
    running = [jnp.cumsum(weights * rho**i, axis=-1) for i in range(3)]
    sums = [jnp.pad(r, ((0, 0), (1, 0))) for r in running]
    by_alignment[alignment] = sums, _offsets(x, alignment)

  def squares(lo, hi, even, sign):  # Σ weight_p (1 + sign·(ρ_x − ρ_p))² over sorted places [lo, hi)
    def aligned(alignment):
      sums, rho_x = by_alignment[alignment]
      w0, w1, w2 = (jnp.take_along_axis(r, hi, -1) - jnp.take_along_axis(r, lo, -1) for r in sums)
      c = 1 + sign * rho_x
      return c * c * w0 - sign * 2 * c * w1 + w2

    return jnp.where(even, aligned(0), aligned(1))

  top, bottom = _beyond(x, JITTER), _beyond(x, -JITTER)
  at, above, under = find(u, x, "right"), find(u, top, "left"), find(u, bottom, "right")
  higher = squares(at, jnp.maximum(above, at), _same_bucket(x, top), 1)  # p above x
  lower = squares(jnp.minimum(under, at), at, _same_bucket(bottom, x), -1)  # p at or below x
  return (higher - lower) / 2


def _expected_last(flat, cflat, fixated_values):
  """E[A_last]: the pixels at or above the lowest jittered fixated value, over (R, P) pixels
  with weights; fixated_values (R, K) ascending (+inf padded). With z in JITTERs above the lowest
  fixated value m, Φ(z) = Π_p (1 − clip(z − b_p, 0, 1)) is the chance that every fixated value
  stays above z (b_p: p's value in JITTERs above m) and J(a) = ∫_a^1 Φ; a pixel a JITTERs above
  m (|a| < 1) is at or above the lowest with chance 1 − J(a) for a ≥ 0, 1 + a − J(0) + J(1 + a)
  below. Up to K of the lowest fixated values enter Φ: with more of them within a JITTER of m
  (so N > K), the others change a pixel's chance by under 1/K and the AUC by under 1/(2K²)."""
  m = fixated_values[:, :1]
  b = (fixated_values - m) / JITTER
  z = jnp.linspace(0.0, 1.0, JITTER_STEPS + 1, dtype=flat.dtype)
  phi = jnp.prod(1 - jnp.clip(z[None, :, None] - b[:, None, :], 0, 1), axis=-1)
  steps = (phi[:, 1:] + phi[:, :-1]) / (2 * JITTER_STEPS)
  j = jnp.pad(jnp.cumsum(steps[:, ::-1], axis=-1)[:, ::-1], ((0, 0), (0, 1)))

  def j_at(a):  # J between the grid's points, linearly (a in [0, 1])
    place = a * JITTER_STEPS
    i = jnp.clip(jnp.floor(place), 0, JITTER_STEPS - 1).astype(jnp.int32)
    left, right = jnp.take_along_axis(j, i, -1), jnp.take_along_axis(j, i + 1, -1)
    return left + (place - i) * (right - left)

  a = jnp.clip((flat - m) / JITTER, -1, 1)
  chance = jnp.where(a >= 0, 1 - j_at(a), 1 + a - j[:, :1] + j_at(1 + a))
  unfixated = jnp.where(cflat > 0, 0.0, chance)
  return jnp.sum(cflat > 0, axis=-1).astype(flat.dtype) + jnp.sum(unfixated, axis=-1)


def _judd_negatives(c, n, variant: str):
  """AUC-Judd's D: H·W − U for ntire2026 (U: the scorer's `np.unique(F, axis=1)` column count,
  1 when every fixation has y == x, else 2), H·W − N for mit."""
  h, w = c.shape[-2], c.shape[-1]
  if variant != "ntire2026":
    return h * w - n
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  off_diagonal = jnp.any((c > 0) & (rows != cols), axis=(-2, -1))
  return h * w - jnp.where(off_diagonal, 2, 1).astype(c.dtype)


SAUC_STEP = 0.1  # AUC_shuffled.m's default stepSize
SAUC_THRESHOLDS = 11  # 0:0.1:max has at most eleven values on a min-max normalised map


def _colon_thresholds(top, xp=jnp, step: float = SAUC_STEP):
  """MATLAB's `0:step:top` for each frame, as its colon operator builds it (to the last bit,
  which decides where a value of an 8-bit map such as 153/255 = 0.6 falls): n intervals, the end
  c = n·step (or `top` itself when within 2·eps·top of it), the first half k·step, the second
  half c − (n − k)·step, the middle of an even count c/2. Padded to `SAUC_THRESHOLDS` with +inf,
  ascending: (..., 11). `xp`: jax.numpy or numpy (float64 on the host)."""
  top = xp.asarray(top)
  tol = 2.0 * 2.0**-52 * top
  n = xp.floor(top / step + 0.5)  # MATLAB's round (half away from zero; top ≥ 0)
  n = xp.where(n * step - top > tol, n - 1, n)
  c = n * step
  c = xp.where(c - top > -tol, top, c)
  n, c = n[..., None], c[..., None]
  k = xp.arange(SAUC_THRESHOLDS, dtype=top.dtype)
  t = xp.where(k <= xp.floor(n / 2), k * step, c - (n - k) * step)
  t = xp.where((xp.mod(n, 2) == 0) & (k == n / 2), c / 2, t)
  return xp.where(k <= n, t, xp.inf)


def _roc_area(tp, fp, xp):
  """Trapezoids over (0,0), the points along the last axis, (1,1); `xp` is numpy or jax.numpy."""
  zeros, ones = xp.zeros_like(tp[..., :1]), xp.ones_like(tp[..., :1])
  tp = xp.concatenate([zeros, tp, ones], axis=-1)
  fp = xp.concatenate([zeros, fp, ones], axis=-1)
  return xp.sum((fp[..., 1:] - fp[..., :-1]) * (tp[..., 1:] + tp[..., :-1]) / 2, axis=-1)


def _shuffled_auc(values, positives, negatives, xp):
  """`AUC_shuffled.m`'s curve for one or more draws: `values` (..., P) the min-max normalised
  map values, `positives`/`negatives` (..., P) how many fixated/negative pixels hold each value;
  thresholds `0:0.1:max` over the values either holds, trapezoids over (0,0) … (1,1)."""
  held = (positives > 0) | (negatives > 0)
  top = xp.max(xp.where(held, values, 0), axis=-1)
  steps = _colon_thresholds(top, xp)[..., ::-1]  # descending
  above = values[..., None, :] >= steps[..., :, None]  # (..., 11, P)
  tp = xp.sum(above * positives[..., None, :], axis=-1) / xp.sum(positives, -1, keepdims=True)
  fp = xp.sum(above * negatives[..., None, :], axis=-1) / xp.sum(negatives, -1, keepdims=True)
  return _roc_area(tp, fp, xp)


def _log_comb(n, r):
  """log C(n, r) elementwise (−inf where n < r), in float64."""
  from scipy.special import gammaln

  n = np.asarray(n, np.float64)
  safe = np.maximum(n, r)
  return np.where(n >= r, gammaln(safe + 1) - gammaln(r + 1) - gammaln(safe - r + 1), -np.inf)


def _expected_draws(values, positives, negatives):
  """E[AUC] over `AUC_shuffled.m`'s draw of k = min(P, N) of the N negatives, exactly. The AUC
  is linear in the drawn counts once the thresholds are fixed, and they are fixed by the top
  level of the positives and the drawn negatives. So: one case where every drawn negative lies at
  or below the positives' top level, and one for each higher level L holding negatives, that L
  being the drawn maximum; each with its probability and, per level, the expected number drawn
  (hypergeometric: a pixel below L is drawn with probability (C(n−1, k−1) − C(a−1, k−1)) / D, one
  at L with C(n−1, k−1) / D, for a pixels below L, n = a + (those at L), D = C(n, k) − C(a, k))."""
  levels = np.arange(len(values))
  k = min(int(positives.sum()), int(negatives.sum()))
  below = np.cumsum(negatives)  # negatives at or below each level
  total = _log_comb(below[-1], k)
  top_pos = levels[positives > 0].max()
  weights, drawn = [], []
  if below[top_pos] >= k:
    weights.append([np.exp(_log_comb(below[top_pos], k) - total)])
    drawn.append(np.where(levels <= top_pos, negatives * k / below[top_pos], 0.0)[None])
  # every higher level holding negatives at once, one row each
  tops = levels[(levels > top_pos) & (negatives > 0)]
  a, n = below[tops] - negatives[tops], below[tops]
  log_n, log_a = _log_comb(n, k), _log_comb(a, k)
  weight = np.exp(log_n - total) - np.exp(log_a - total)
  possible = weight > 0
  tops, a, n, log_n, log_a = (x[possible] for x in (tops, a, n, log_n, log_a))
  log_d = log_n + np.log1p(-np.exp(log_a - log_n))
  p_top = np.exp(_log_comb(n - 1, k - 1) - log_d)
  p_below = p_top - np.exp(_log_comb(a - 1, k - 1) - log_d)
  top = tops[:, None]
  p_drawn = np.where(levels < top, p_below[:, None], np.where(levels == top, p_top[:, None], 0.0))
  weights.append(weight[possible])
  drawn.append(negatives * p_drawn)
  weights, drawn = np.concatenate(weights), np.concatenate(drawn)
  aucs = _shuffled_auc(values, np.broadcast_to(positives, drawn.shape), drawn, np)
  return float(np.dot(weights, aucs) / np.sum(weights))


def sauc_levels(hist, lo: int, hi: int, *, splits: int = 0, rng=None) -> float:
  """`AUC_shuffled.m` on an 8-bit map, exactly (float64, host): `hist` (2, 256) the fixated and
  the negative pixels at each grey level, `lo`/`hi` the map's lowest and highest level. The map is
  min-max normalised as the code does, (level − lo)/(hi − lo). `splits=0`: the expected value of
  the code's result over its random draws, computed exactly (`_expected_draws`); `splits=N`: N
  draws made as the code makes them, seeded by `rng` (a numpy Generator), their mean. A draw
  matters only through how many drawn pixels lie at each level: a multivariate hypergeometric
  draw over the levels, sampled as such."""
  hist = np.asarray(hist, np.int64)
  npos, nneg = int(hist[0].sum()), int(hist[1].sum())
  if hi <= lo or npos == 0 or nneg == 0:
    return float("nan")
  values = (np.arange(hist.shape[-1], dtype=np.float64) - lo) / (hi - lo)
  if not splits:
    return _expected_draws(values, hist[0], hist[1])
  drawn = rng.multivariate_hypergeometric(hist[1], min(npos, nneg), size=splits)
  positives = np.broadcast_to(hist[0], drawn.shape)
  return float(np.mean(_shuffled_auc(values, positives, drawn, np)))


def level_histograms(levels, fixations, negatives):
  """What `sauc_levels` needs of 8-bit maps, jittable: `levels` (..., H, W) grey levels 0…255
  (as float or int), fixations and negatives (..., H, W) counts. Returns int32 (..., 2, 256),
  the fixated and negative pixels at each level, and int32 (..., 2), each map's lowest and
  highest level."""
  lead = levels.shape[:-2]
  q = jnp.asarray(levels).astype(jnp.int32).reshape(-1, levels.shape[-2] * levels.shape[-1])
  out = [
    _per_level(q, (jnp.asarray(mask) > 0).reshape(q.shape).astype(jnp.int32))
    for mask in (fixations, negatives)
  ]
  hist = jnp.stack(out, axis=1).reshape(*lead, 2, 256)
  span = jnp.stack([jnp.min(q, -1), jnp.max(q, -1)], axis=-1).reshape(*lead, 2)
  return hist, span


def _sauc_mit(pred, fixations, negatives):
  """`AUC_shuffled.m` with every negative, jittable: each pixel its own value."""
  ok = _validate(pred, counts={"fixations": fixations, "negatives": negatives})
  s = _f(pred)
  lead, hw = s.shape[:-2], s.shape[-2] * s.shape[-1]
  spread = jnp.max(s, axis=(-2, -1)) > jnp.min(s, axis=(-2, -1))
  values = jnp.where(_expand(spread), _minmax(s), 0).reshape(*lead, hw)
  pos = (jnp.asarray(fixations) > 0).reshape(*lead, hw).astype(s.dtype)
  neg = (jnp.asarray(negatives) > 0).reshape(*lead, hw).astype(s.dtype)
  auc = _shuffled_auc(values, pos, neg, jnp)
  defined = spread & (jnp.sum(pos, -1) > 0) & (jnp.sum(neg, -1) > 0)
  return _guard(jnp.where(defined, auc, jnp.nan), ok)


def sauc(pred, fixations, negatives, variant: str = "ntire2026"):
  """Shuffled AUC: the fixated values against `negatives` (other frames' fixations).

  mit: `AUC_shuffled.m` with every negative pixel at once: the map min-max normalised, binary
  positives and negatives, thresholds MATLAB's 0:0.1:max, trapezoids over (0,0) … (1,1). That is
  what the code returns when there are no more negatives than fixated pixels; with more, it
  draws as many as there are fixated pixels, 100 times: `sauc_levels` gives the exact expected
  value of those draws (or the draws themselves) on 8-bit maps, as `visage-eval` scores them.
  ntire2026 (not reported by the challenge): the exact ROC AUC of the fixation events against the
  negative events, weighted by their counts, ties counting one half.
  """
  _check(variant)
  if variant == "mit":
    return _sauc_mit(pred, fixations, negatives)
  ok = _validate(pred, counts={"fixations": fixations, "negatives": negatives})
  s = _f(pred)
  pos = _f(fixations)
  neg = _f(negatives)
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
  defined = (total_p > 0) & (total_n > 0)
  auc = jnp.where(defined, wins / jnp.where(defined, total_p * total_n, 1), jnp.nan)
  return _guard(auc.reshape(lead), ok)


# ------------------------------------------------------------------------------------------------
# The challenge's reading of a map, for scoring a prediction exactly as the challenge did.


def cv2_resize_linear(x, out_hw: tuple[int, int]):
  """cv2.resize(x, (W, H), interpolation=INTER_LINEAR) for float maps (..., H, W), jittable."""
  return maps.resize_linear(_f(x), out_hw, xp=jnp)


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
