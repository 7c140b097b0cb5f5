"""The `mit` variant against float64 numpy ports of the MIT benchmark's MATLAB code
(cvzoya/saliency, code_forMetrics), written here line by line from the .m files, jitter and random
splits included; no code shared with `visage_jax.metrics`.

MATLAB semantics kept: `std` is the sample std, `corr2` Pearson's r, `trapz` the trapezoid rule,
`any(map(:))` a non-zero test, `eps` 2⁻⁵², `rand` uniform on [0, 1).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from visage_jax import metrics

EPS = 2.0**-52

# ------------------------------------------------------------------------------------------------
# ports


def m_auc_judd(saliency_map, fixation_map, jitter=True, rng=None):
  """AUC_Judd.m."""
  s = np.asarray(saliency_map, np.float64)
  if not np.any(fixation_map):
    return np.nan
  if jitter:
    s = s + rng.random(s.shape) / 10000000
  with np.errstate(invalid="ignore", divide="ignore"):
    s = (s - s.min()) / (s.max() - s.min())
  if np.all(np.isnan(s)):
    return np.nan
  S, F = s.ravel(), np.asarray(fixation_map).ravel()
  sth = S[F > 0]
  n_fix, n_pix = len(sth), len(S)
  allthreshes = np.sort(sth)[::-1]
  tp = np.zeros(n_fix + 2)
  fp = np.zeros(n_fix + 2)
  tp[-1] = fp[-1] = 1
  i = np.arange(1, n_fix + 1)  # the loop over i = 1:Nfixations, as arrays
  aboveth = np.sum(S[None, :] >= allthreshes[:, None], axis=1)
  tp[1:-1] = i / n_fix
  fp[1:-1] = (aboveth - i) / (n_pix - n_fix)
  return np.trapezoid(tp, fp)


def m_colon(a, d, b):
  """MATLAB's a:d:b for d > 0, as its colon operator computes it (MathWorks' colonop.m)."""
  tol = 2.0 * EPS * max(abs(a), abs(b))
  n = int(np.floor((b - a) / d + 0.5))
  if a + n * d - b > tol:
    n -= 1
  c = a + n * d
  if c - b > -tol:
    c = b
  v = np.zeros(n + 1)
  for k in range(n // 2 + 1):
    v[k] = a + k * d
    v[n - k] = c - k * d
  if n % 2 == 0:
    v[n // 2] = (a + c) / 2
  return v


def m_auc_shuffled(saliency_map, fixation_map, other_map, n_splits=100, step=0.1, rng=None):
  """AUC_shuffled.m."""
  if not np.any(fixation_map):
    return np.nan
  s = np.asarray(saliency_map, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    s = (s - s.min()) / (s.max() - s.min())
  if np.all(np.isnan(s)):
    return np.nan
  S, F, Oth = s.ravel(), np.asarray(fixation_map).ravel(), np.asarray(other_map).ravel()
  sth = S[F > 0]
  n_fix = len(sth)
  ind = np.flatnonzero(Oth > 0)
  n_oth = min(n_fix, len(ind))
  if n_oth == 0:
    return np.nan
  aucs = []
  for _ in range(n_splits):
    curfix = S[ind[rng.permutation(len(ind))][:n_oth]]
    top = max(sth.max(), curfix.max())
    allthreshes = m_colon(0.0, step, top)[::-1]
    tp = np.zeros(len(allthreshes) + 2)
    fp = np.zeros(len(allthreshes) + 2)
    tp[-1] = fp[-1] = 1
    for i, t in enumerate(allthreshes, start=1):
      tp[i] = np.sum(sth >= t) / n_fix
      fp[i] = np.sum(curfix >= t) / n_oth
    aucs.append(np.trapezoid(tp, fp))
  return float(np.mean(aucs))


def m_similarity(map1, map2):
  """similarity.m."""
  m1, m2 = np.asarray(map1, np.float64), np.asarray(map2, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    if np.any(m1):
      m1 = (m1 - m1.min()) / (m1.max() - m1.min())
      m1 = m1 / m1.sum()
    if np.any(m2):
      m2 = (m2 - m2.min()) / (m2.max() - m2.min())
      m2 = m2 / m2.sum()
  if np.all(np.isnan(m1)) or np.all(np.isnan(m2)):
    return np.nan
  return np.sum(np.minimum(m1, m2))


def m_cc(saliency_map, fixation_map):
  """CC.m: z-score both (sample std), then corr2."""
  with np.errstate(invalid="ignore", divide="ignore"):
    m1 = np.asarray(saliency_map, np.float64)
    m2 = np.asarray(fixation_map, np.float64)
    m1 = (m1 - m1.mean()) / m1.std(ddof=1)
    m2 = (m2 - m2.mean()) / m2.std(ddof=1)
    a, b = m2 - m2.mean(), m1 - m1.mean()
    return np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))


def m_nss(saliency_map, fixation_map):
  """NSS.m."""
  m = np.asarray(saliency_map, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    m = (m - m.mean()) / m.std(ddof=1)
    picked = m[np.asarray(fixation_map).astype(bool)]
    return picked.mean() if picked.size else np.nan


def m_kldiv(saliency_map, fixation_map):
  """KLdiv.m."""
  m1 = np.asarray(saliency_map, np.float64)
  m2 = np.asarray(fixation_map, np.float64)
  if np.any(m1):
    m1 = m1 / m1.sum()
  if np.any(m2):
    m2 = m2 / m2.sum()
  return np.sum(m2 * np.log(EPS + m2 / (m1 + EPS)))


# ------------------------------------------------------------------------------------------------
# cases


def _smooth(rng, h, w, k=3):
  yy, xx = np.mgrid[0:h, 0:w]
  m = np.zeros((h, w))
  for _ in range(k):
    cy, cx, sig = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(h, w) / 3)
    m += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
  return m


def _fixations(rng, shape, pred, n):
  """Counts: n events drawn towards high values of `pred` (so AUCs are far from 0.5)."""
  p = (pred.ravel() + 0.05) ** 2
  picks = rng.choice(pred.size, n, p=p / p.sum())
  counts = np.zeros(pred.size, np.int32)
  np.add.at(counts, picks, 1)
  return counts.reshape(shape)


def make_case(kind: str, seed: int):
  """(pred, gt, fixation counts, negative counts)."""
  rng = np.random.default_rng(seed)
  h, w = 36, 48
  pred, gt = _smooth(rng, h, w), _smooth(rng, h, w)
  if kind == "uint8":  # an 8-bit map as scored: ties everywhere
    pred = np.floor(pred / pred.max() * 255)
  elif kind == "few_levels":  # heavy ties: six grey levels
    pred = np.round(pred / pred.max() * 5) * 51
  elif kind == "binary":
    pred = np.where(pred > np.median(pred), 255.0, 0.0)
  elif kind == "constant":
    pred = np.full((h, w), 128.0)
  elif kind == "zero_pred":
    pred = np.zeros((h, w))
  elif kind == "zero_gt":
    gt = np.zeros((h, w))
  elif kind == "many_fixations":  # more fixated pixels than metrics.SPARSE_SLOTS: the full sort
    pred = np.round(pred / pred.max() * 5) * 51
  elif kind == "softmax":  # a long flat tail: most values within 1e-7 of each other and of 0
    z = 40 * pred / pred.max()
    pred = np.exp(z - z.max()) / np.sum(np.exp(z - z.max()))
  elif kind == "exp_peaks":
    pred = 1e-5 * np.exp(-30 * (1 - pred / pred.max()))
  elif kind == "offset":  # near values far from 0: spread over four jitters around 100
    pred = 100 + 4e-7 * pred / pred.max()
  elif kind == "near_one":  # float32 neighbours below 1, 2⁻²⁴ ≈ 0.6e-7 apart
    pred = 1 - np.round(8 * (1 - pred / pred.max())) * 2.0**-24
  elif kind != "smooth":
    raise ValueError(kind)
  n = 2000 if kind == "many_fixations" else int(rng.integers(15, 40))
  fix = _fixations(rng, (h, w), _smooth(rng, h, w), n)
  neg = _fixations(rng, (h, w), rng.random((h, w)), int(rng.integers(60, 200)))
  return pred, gt, fix, neg


# maps whose distinct values lie closer than AUC_Judd.m's jitter (rand/1e7)
CLOSER_THAN_JITTER = ["softmax", "exp_peaks", "offset", "near_one"]
KINDS = [
  "smooth",
  "uint8",
  "few_levels",
  "binary",
  "constant",
  "zero_pred",
  "zero_gt",
  "many_fixations",
  *CLOSER_THAN_JITTER,
]


def _same(name, ours, ref, tol=1e-6):
  ours, ref = float(ours), float(ref)
  if np.isnan(ref):
    assert np.isnan(ours), f"{name}: MATLAB gives NaN, ours {ours}"
  else:
    assert abs(ours - ref) <= tol, f"{name}: ours {ours!r}, MATLAB port {ref!r}"


# ------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_metrics_equal_the_matlab_code(kind, seed):
  pred, gt, fix, neg = make_case(kind, seed)
  with jax.enable_x64(True):
    _same("CC", metrics.cc(pred, gt, variant="mit"), m_cc(pred, gt))
    _same("SIM", metrics.sim(pred, gt, variant="mit"), m_similarity(pred, gt))
    _same("KLD", metrics.kld(pred, gt, variant="mit"), m_kldiv(pred, gt))
    _same("NSS", metrics.nss(pred, fix, variant="mit"), m_nss(pred, fix))
    ours = metrics.auc_judd(pred, fix, variant="mit", jitter=False)
    _same("AUC-Judd (no jitter)", ours, m_auc_judd(pred, fix, jitter=False))
    # With no more negatives than fixated pixels every split of AUC_shuffled.m takes them all.
    few = _fixations(np.random.default_rng(seed), fix.shape, gt, 8)
    assert np.sum(few > 0) <= np.sum(fix > 0)
    rng = np.random.default_rng(seed)
    _same(
      "sAUC", metrics.sauc(pred, fix, few, variant="mit"), m_auc_shuffled(pred, fix, few, rng=rng)
    )


def test_all_zero_maps_follow_the_any_guards():
  pred, gt, _, _ = make_case("smooth", 0)
  zero = np.zeros_like(pred)
  with jax.enable_x64(True):
    assert float(metrics.sim(zero, gt, variant="mit")) == 0.0 == m_similarity(zero, gt)
    assert float(metrics.sim(pred, zero, variant="mit")) == 0.0
    want = m_kldiv(zero, gt)
    assert np.isfinite(want)
    _same("KLD", metrics.kld(zero, gt, variant="mit"), want)
    _same("KLD", metrics.kld(pred, zero, variant="mit"), m_kldiv(pred, zero))
    # a constant non-zero map has no spread: similarity.m's min-max gives NaN
    assert np.isnan(float(metrics.sim(np.full_like(pred, 3.0), gt, variant="mit")))


@pytest.mark.parametrize(
  "kind",
  ["uint8", "few_levels", "binary", "constant", "smooth", "many_fixations", *CLOSER_THAN_JITTER],
)
def test_auc_judd_is_the_mean_of_the_jittered_code(kind):
  """Ours (no random draw) against the mean of 4000 runs of AUC_Judd.m with its default jitter
  (a random map's AUC spreads by ~0.04 a run: 4000 runs bring the mean's error to ~6e-4; on the
  maps closer than the jitter, the jitter-free value is 0.01–0.2 away)."""
  pred, _, fix, _ = make_case(kind, 7)
  rng = np.random.default_rng(0)
  runs = np.array([m_auc_judd(pred, fix, jitter=True, rng=rng) for _ in range(4000)])
  with jax.enable_x64(True):
    ours = float(metrics.auc_judd(pred, fix, variant="mit"))
  assert abs(ours - runs.mean()) <= 2e-3, (ours, runs.mean(), runs.std())
  without = m_auc_judd(pred, fix, jitter=False)
  if kind == "constant":
    assert abs(ours - 0.5) < 0.02 and np.isnan(without)
  if kind == "many_fixations":
    assert np.sum(fix > 0) > metrics.SPARSE_SLOTS
  if kind in ("few_levels", "binary", *CLOSER_THAN_JITTER):  # the jitter-free value is far off
    assert abs(ours - without) > 0.01, (ours, without)


def expected_auc_judd(saliency_map, fixation_map, jitter=1e-7, steps=1000):
  """E[AUC_Judd.m] under its jitter, by brute force over pixel pairs (float64, no code shared
  with ours). Per draw the trapezoids sum to 1 + (N² + A_last − 2·Σ_p A_p)/(2·N·D), A_p the
  pixels at or above fixated pixel p and A_last those at or above the lowest; so E[AUC] takes
  E[A_p] = 1 + Σ_{q≠p} P(s_q + U_q > s_p + U_p), the difference of two uniform jitters being
  triangular, and E[A_last] = N + Σ_{q unfixated} (1 − P(every fixated value stays above q's)),
  the last an integral over q's jitter by a midpoint rule of `steps` points."""
  s = np.asarray(saliency_map, np.float64).ravel() / jitter
  fixated = np.asarray(fixation_map).ravel() > 0
  n, d = fixated.sum(), s.size - fixated.sum()
  gap = s[fixated][:, None] - s[None, :]  # (N, P): s_p − s_q in jitters
  # P(s_q + U_q > s_p + U_p) = P(U_q − U_p > gap), U_q − U_p triangular on (−1, 1)
  chance = np.where(gap < 0, 1 - (1 + gap) ** 2 / 2, (1 - gap) ** 2 / 2)
  above = np.where(gap <= -1, 1.0, np.where(gap >= 1, 0.0, chance))
  a_p = 1 + above.sum(axis=1) - 0.5  # q = p itself is a tie: take its 1/2 back
  t = (np.arange(steps) + 0.5) / steps
  low = s[fixated].min()
  q = s[~fixated]
  q = q[q > low - 1]  # lower ones stay below every fixated value
  stays_above = np.ones((q.size, steps))
  for p in s[fixated]:  # P(p's value > q's value + t) for every unfixated q and draw t of q's
    stays_above *= 1 - np.clip(q[:, None] + t[None, :] - p, 0, 1)
  a_last = n + np.sum(1 - stays_above.mean(axis=1))
  return 1 + (n * n + a_last - 2 * a_p.sum()) / (2 * n * d)


@pytest.mark.parametrize("kind", ["smooth", "uint8", "few_levels", *CLOSER_THAN_JITTER])
@pytest.mark.parametrize("events", [30, 2000])
def test_auc_judd_is_the_brute_force_expectation(kind, events):
  """To 1e-6 of the pairwise expectation, on both of ours paths: a few fixated pixels (searched
  among) and more than `SPARSE_SLOTS` (the full sort)."""
  pred, _, _, _ = make_case(kind, 5)
  rng = np.random.default_rng(5)
  fix = _fixations(rng, pred.shape, _smooth(rng, *pred.shape), events)
  assert (np.sum(fix > 0) > metrics.SPARSE_SLOTS) == (events > metrics.SPARSE_SLOTS)
  with jax.enable_x64(True):
    ours = float(metrics.auc_judd(pred, fix, variant="mit"))
  _same("AUC-Judd (jittered)", ours, expected_auc_judd(pred, fix))


def test_auc_judd_in_float32_and_batched():
  kinds = ("uint8", "few_levels", "smooth", "softmax", "exp_peaks", "near_one")
  cases = [make_case(k, 3) for k in kinds]
  pred = np.stack([c[0] for c in cases]).astype(np.float32)
  fix = np.stack([c[2] for c in cases])
  with jax.enable_x64(True):  # the float32 maps, scored in float64
    want = [float(metrics.auc_judd(p, c[2], variant="mit")) for p, c in zip(pred, cases)]
  ours = np.asarray(jax.jit(lambda p, f: metrics.auc_judd(p, f, variant="mit"))(pred, fix))
  np.testing.assert_allclose(ours, want, atol=2e-5)


def _levels(pred, fix, neg):
  """sauc_levels' inputs for an 8-bit map, through the jittable `level_histograms`."""
  hist, span = jax.jit(metrics.level_histograms)(pred, fix, neg)
  return np.asarray(hist), *(int(v) for v in np.asarray(span))


@pytest.mark.parametrize("kind", ["uint8", "few_levels", "binary"])
def test_sauc_levels_is_the_shuffled_code_on_8bit_maps(kind):
  pred, gt, fix, neg = make_case(kind, 4)
  hist, lo, hi = _levels(pred, fix, neg)
  assert (lo, hi) == (pred.min(), pred.max())
  np.testing.assert_array_equal(hist[0], np.bincount(pred[fix > 0].astype(int), minlength=256))
  # few negatives: every split of the code takes them all, so it is deterministic
  few = _fixations(np.random.default_rng(4), fix.shape, gt, 8)
  port = m_auc_shuffled(pred, fix, few, rng=np.random.default_rng(0))
  _same("sAUC", metrics.sauc_levels(*_levels(pred, fix, few)), port, tol=1e-12)
  with jax.enable_x64(True):
    _same("sAUC", metrics.sauc(pred, fix, few, variant="mit"), port)
  # many negatives: the code draws as many as there are fixated pixels, 100 times a call; a
  # draw's AUC spreads by ~0.06, so 10000 draws bring the mean's error to ~6e-4
  assert np.sum(neg > 0) > 2 * np.sum(fix > 0)
  rng = np.random.default_rng(1)
  port = np.mean([m_auc_shuffled(pred, fix, neg, rng=rng) for _ in range(100)])
  expected = metrics.sauc_levels(hist, lo, hi)
  drawn = metrics.sauc_levels(hist, lo, hi, splits=10000, rng=np.random.default_rng(2))
  assert abs(expected - port) <= 3e-3, (expected, port)
  assert abs(drawn - expected) <= 3e-3, (drawn, expected)
  again = metrics.sauc_levels(hist, lo, hi, splits=10000, rng=np.random.default_rng(2))
  assert drawn == again  # seeded: reproducible
  assert np.isnan(metrics.sauc_levels(hist, 7, 7))  # a constant map: the code's NaN map


def test_bad_inputs_raise_naming_the_argument():
  pred, gt, fix, neg = make_case("smooth", 0)
  with pytest.raises(ValueError, match="^gt: shape"):
    metrics.cc(pred, gt[:1])  # would broadcast
  with pytest.raises(ValueError, match="^fixations: shape"):
    metrics.nss(pred, fix[:, :5], variant="mit")
  with pytest.raises(ValueError, match="^pred: negative"):
    metrics.sim(pred - 1, gt, variant="mit")
  with pytest.raises(ValueError, match="^gt: negative"):
    metrics.kld(pred, -gt)
  with pytest.raises(ValueError, match="^pred: non-finite"):
    metrics.cc(np.where(pred > 0.5, np.nan, pred), gt, variant="mit")
  with pytest.raises(ValueError, match="^fixations: negative counts"):
    metrics.auc_judd(pred, -fix, variant="mit")
  with pytest.raises(ValueError, match=r"^fixations: counts must be integers, got float32 \("):
    metrics.nss(pred, fix.astype(np.float32))
  with pytest.raises(ValueError, match="^negatives: negative counts"):
    metrics.sauc(pred, fix, -neg, variant="mit")
  with pytest.raises(ValueError, match="^jitter"):
    metrics.auc_judd(pred, fix, variant="ntire2026", jitter=True)
  # inside jit the values cannot be checked: the frame's result is NaN instead
  bad = np.stack([pred, pred - 1]).astype(np.float32)
  out = jax.jit(lambda p, g: metrics.cc(p, g, variant="mit"))(bad, np.stack([gt, gt]))
  assert np.isfinite(out[0]) and np.isnan(out[1])
