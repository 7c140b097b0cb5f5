"""Metrics against float64 numpy references written here from the definitions (no shared code).

The `ntire2026` references follow the challenge scorer's `bench.py` step by step on an (N, 2)
list of [y, x] events; the `mit` ones follow the MIT benchmark's Matlab code (AUC-Judd without
its jitter, negatives for sAUC given). tests/test_metrics_mit.py ports the MATLAB files themselves.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visage_jax import metrics
from visage_jax.metrics import saliency

# ------------------------------------------------------------------------------------------------
# references


def ref_ntire(s, g, F):
  s, g = s.astype(np.float64), g.astype(np.float64)
  out = {}
  a = (s - s.mean()) / (s.std() + 1e-7)
  b = (g - g.mean()) / (g.std() + 1e-7)
  out["cc"] = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-7)
  out["sim"] = np.minimum(s / (s.sum() + 1e-7), g / (g.sum() + 1e-7)).sum()
  sn, gn = s / s.sum(), g / g.sum()
  out["kld"] = np.sum(gn * np.log(2.2204e-16 + gn / (sn + 2.2204e-16)))
  if len(F) == 0:
    out["nss"] = out["auc_judd"] = np.nan
    return out
  out["nss"] = np.mean(a[F[:, 0], F[:, 1]])
  sth = s[F[:, 0], F[:, 1]]
  n = len(sth)
  u = np.unique(F, axis=1).shape[-1]
  possible = s.size + (n - u)
  th = np.sort(sth)[::-1]
  tp = np.zeros(n + 2)
  fp = np.zeros(n + 2)
  tp[-1] = fp[-1] = 1
  above = np.array([np.sum(s >= t) for t in th])
  k = np.arange(1, n + 1)
  fp[1:-1] = (above - k) / (possible - n)
  tp[1:-1] = k / n
  out["auc_judd"] = np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2)
  return out


def ref_mit(s, g, F):
  s, g = s.astype(np.float64), g.astype(np.float64)
  out = {}
  a, b = s - s.mean(), g - g.mean()
  constant = s.max() == s.min() or g.max() == g.min()
  with np.errstate(invalid="ignore", divide="ignore"):
    # A constant map has no spread: Pearson's r is 0/0 (float64 rounding can hide that).
    out["cc"] = np.nan if constant else (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
    s1 = (s - s.min()) / (s.max() - s.min())
    g1 = (g - g.min()) / (g.max() - g.min())
    out["sim"] = np.minimum(s1 / s1.sum(), g1 / g1.sum()).sum()
    eps = 2.0**-52
    out["kld"] = np.sum((g / g.sum()) * np.log(eps + (g / g.sum()) / (s / s.sum() + eps)))
    binary = np.zeros(s.shape, bool)
    if len(F):
      binary[F[:, 0], F[:, 1]] = True
    if not binary.any():
      out["nss"] = out["auc_judd"] = np.nan
      return out
    z = (s - s.mean()) / s.std(ddof=1)
    out["nss"] = np.nan if s.max() == s.min() else z[binary].mean()
  if s.max() == s.min():  # AUC_Judd.m's min-max gives an all-NaN map
    out["auc_judd"] = np.nan
    return out
  sth = np.sort(s[binary])[::-1]
  n = len(sth)
  tp, fp = [0.0], [0.0]
  for i, t in enumerate(sth, start=1):
    tp.append(i / n)
    fp.append((np.sum(s >= t) - i) / (s.size - n))
  tp.append(1.0)
  fp.append(1.0)
  out["auc_judd"] = np.trapezoid(tp, fp)
  return out


def ref_sauc_mit(s, fix_counts, neg_counts):
  s = s.astype(np.float64)
  if s.max() == s.min():
    return np.nan
  s = (s - s.min()) / (s.max() - s.min())
  pos, neg = s[fix_counts > 0], s[neg_counts > 0]
  if len(pos) == 0 or len(neg) == 0:
    return np.nan
  top = max(pos.max(), neg.max())
  threshes = [k / 10 for k in range(11) if k / 10 <= top + 1e-12][::-1]
  tp, fp = [0.0], [0.0]
  for t in threshes:
    tp.append(np.sum(pos >= t) / len(pos))
    fp.append(np.sum(neg >= t) / len(neg))
  tp.append(1.0)
  fp.append(1.0)
  return np.trapezoid(tp, fp)


def ref_sauc_events(s, fix_counts, neg_counts):
  s = s.astype(np.float64)
  pos = np.repeat(s.ravel(), fix_counts.ravel())
  neg = np.repeat(s.ravel(), neg_counts.ravel())
  if len(pos) == 0 or len(neg) == 0:
    return np.nan
  wins = sum(np.sum(p > neg) + 0.5 * np.sum(p == neg) for p in pos)
  return wins / (len(pos) * len(neg))


# ------------------------------------------------------------------------------------------------
# cases


def counts_from_events(F, shape):
  c = np.zeros(shape, np.int32)
  for y, x in F:
    c[y, x] += 1
  return c


def smooth(rng, h, w, k=3):
  m = np.zeros((h, w))
  for _ in range(k):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    sig = rng.uniform(2, max(h, w) / 3)
    yy, xx = np.mgrid[0:h, 0:w]
    m += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
  return m


def make_case(kind, seed):
  rng = np.random.default_rng(seed)
  h, w = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
  s = smooth(rng, h, w)
  g = smooth(rng, h, w)
  n = int(rng.integers(5, 40))
  F = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1)
  if kind == "random":
    pass
  elif kind == "ties":
    s = np.round(s / s.max() * 4) / 4  # five levels: many exact ties
    F[: n // 2] = F[0]
  elif kind == "constant_pred":
    s = np.full((h, w), 0.3)
  elif kind == "constant_gt":
    g = np.full((h, w), 0.7)
  elif kind == "single":
    F = F[:1]
  elif kind == "border":
    F = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [0, w // 2], [h // 2, 0]])
  elif kind == "duplicates":
    F = np.concatenate([F, F[:3], F[:1], F[:1]])
  elif kind == "diagonal":
    d = rng.integers(0, min(h, w), n)
    F = np.stack([d, d], axis=1)
  elif kind == "uint8":
    s = (s / s.max() * 255).astype(np.uint8)
    g = (g / g.max() * 255).astype(np.uint8)
  elif kind == "no_fixations":
    F = np.zeros((0, 2), np.int64)
  else:
    raise ValueError(kind)
  return s, g, F.astype(np.int64)


KINDS = [
  "random",
  "ties",
  "constant_pred",
  "constant_gt",
  "single",
  "border",
  "duplicates",
  "diagonal",
  "uint8",
  "no_fixations",
]
NO_JITTER = {"ntire2026": {}, "mit": {"jitter": False}}
CASES = [(k, seed) for k in KINDS for seed in range(3)]  # 30 cases, plus the resized ones below


def _close(name, ours, ref):
  ours, ref = float(ours), float(ref)
  if np.isnan(ref):
    assert np.isnan(ours), f"{name}: expected undefined (NaN), got {ours}"
    return
  tol = 1e-5 + (1e-5 * abs(ref) if name in ("nss", "kld") else 0.0)
  assert abs(ours - ref) <= tol, f"{name}: ours {ours!r} vs reference {ref!r}"


@pytest.mark.parametrize("kind,seed", CASES, ids=[f"{k}-{s}" for k, s in CASES])
@pytest.mark.parametrize("variant", ["ntire2026", "mit"])
def test_metrics_match_references(kind, seed, variant):
  s, g, F = make_case(kind, seed)
  c = counts_from_events(F, s.shape)
  ref = (ref_ntire if variant == "ntire2026" else ref_mit)(s, g, F)
  _close("cc", metrics.cc(s, g, variant=variant), ref["cc"])
  _close("sim", metrics.sim(s, g, variant=variant), ref["sim"])
  _close("kld", metrics.kld(s, g, variant=variant), ref["kld"])
  _close("nss", metrics.nss(s, c, variant=variant), ref["nss"])
  _close("auc_judd", metrics.auc_judd(s, c, variant=variant, **NO_JITTER[variant]), ref["auc_judd"])
  rng = np.random.default_rng(seed + 100)
  neg = counts_from_events(
    np.stack([rng.integers(0, s.shape[0], 30), rng.integers(0, s.shape[1], 30)], axis=1), s.shape
  )
  want = (ref_sauc_events if variant == "ntire2026" else ref_sauc_mit)(s, c, neg)
  _close("sauc", metrics.sauc(s, c, neg, variant=variant), want)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variant", ["ntire2026", "mit"])
def test_batched_over_leading_axes(seed, variant):
  cases = [make_case(k, seed) for k in ("random", "ties", "duplicates", "diagonal")]
  h = min(c[0].shape[0] for c in cases)
  w = min(c[0].shape[1] for c in cases)
  S = np.stack([c[0][:h, :w].astype(np.float64) for c in cases]).reshape(2, 2, h, w)
  G = np.stack([c[1][:h, :w].astype(np.float64) for c in cases]).reshape(2, 2, h, w)
  Fs = [c[2][(c[2][:, 0] < h) & (c[2][:, 1] < w)] for c in cases]
  C = np.stack([counts_from_events(f, (h, w)) for f in Fs]).reshape(2, 2, h, w)
  auc = np.asarray(metrics.auc_judd(S, C, variant=variant, **NO_JITTER[variant]))
  nss = np.asarray(metrics.nss(S, C, variant=variant))
  assert auc.shape == nss.shape == (2, 2)
  ref = ref_ntire if variant == "ntire2026" else ref_mit
  for i in range(4):
    r = ref(S.reshape(4, h, w)[i], G.reshape(4, h, w)[i], Fs[i])
    _close("auc_judd", auc.reshape(4)[i], r["auc_judd"])
    _close("nss", nss.reshape(4)[i], r["nss"])


@pytest.mark.parametrize(
  "src,dst",
  [
    ((36, 64), (45, 80)),
    ((224, 224), (90, 160)),
    ((50, 30), (50, 31)),
    ((7, 9), (20, 3)),
    ((224, 224), (1080, 1920)),
  ],
)
def test_cv2_resize_is_opencvs(src, dst):
  rng = np.random.default_rng(3)
  x = rng.random(src)
  ours = np.asarray(metrics.cv2_resize_linear(x, dst))
  ref = cv2.resize(x, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("as_uint8", [False, True])
def test_scoring_a_prediction_at_another_resolution(seed, as_uint8):
  """The challenge's whole path: channel mean, min-max, OpenCV resize, then the metrics."""
  rng = np.random.default_rng(seed)
  gt_h, gt_w = 45, 80
  pred = smooth(rng, 28, 28)
  pred = np.repeat(pred[..., None], 3, axis=-1) * rng.uniform(0.5, 2)
  gt = smooth(rng, gt_h, gt_w)
  if as_uint8:
    pred = (pred / pred.max() * 255).astype(np.uint8)
    gt = (gt / gt.max() * 255).astype(np.uint8)
  F = np.stack([rng.integers(0, gt_h, 25), rng.integers(0, gt_w, 25)], axis=1)
  eps = np.finfo(np.float32).eps

  def read(img):  # bench.py's read_sm
    img = img.mean(axis=2) if img.ndim == 3 else img.astype(np.float64)
    return (img - img.min()) / (img.max() - img.min() + eps)

  g_ref = read(gt)
  p_ref = cv2.resize(read(pred), (gt_w, gt_h))
  ref = ref_ntire(p_ref, g_ref, F)
  p = metrics.ntire2026_preprocess(pred, (gt_h, gt_w))
  g = metrics.ntire2026_preprocess(gt, (gt_h, gt_w))
  c = counts_from_events(F, (gt_h, gt_w))
  _close("cc", metrics.cc(p, g), ref["cc"])
  _close("sim", metrics.sim(p, g), ref["sim"])
  _close("nss", metrics.nss(p, c), ref["nss"])
  _close("auc_judd", metrics.auc_judd(p, c), ref["auc_judd"])


def test_metrics_jit_and_reject_unknown_variant():
  import jax

  s, g, F = make_case("random", 0)
  c = counts_from_events(F, s.shape)
  f = jax.jit(lambda s, g, c: (metrics.cc(s, g), metrics.auc_judd(s, c, variant="mit")))
  a, b = f(s, g, c)
  assert np.isfinite(a) and np.isfinite(b)
  with pytest.raises(ValueError, match="variant"):
    metrics.cc(s, g, variant="dhf1k")


def test_float64_when_x64_is_on():
  import jax

  s, g, F = make_case("random", 1)
  c = counts_from_events(F, s.shape)
  with jax.enable_x64(True):
    out = [
      metrics.cc(s, g),
      metrics.nss(s, c),
      metrics.auc_judd(s, c),
      metrics.sim(s, g, variant="mit"),
    ]
    assert all(o.dtype == np.float64 for o in out)
    ref = ref_ntire(s, g, F)
    assert abs(float(out[0]) - ref["cc"]) <= 1e-12
    assert abs(float(out[2]) - ref["auc_judd"]) <= 1e-12
  assert metrics.cc(s, g).dtype == np.float32


def test_sparse_counts_at_and_above_each_value_with_ties():
  """AUC-Judd's per-value pixel counts, #{q ≥ v}, on rows full of ties (few levels,
  repeated values, +inf padding as the packing leaves it), against numpy's direct comparison."""
  import jax

  rng = np.random.default_rng(0)
  flat = rng.integers(0, 5, (4, 300)).astype(np.float32)
  values = np.sort(rng.integers(0, 6, (4, 16)).astype(np.float32), axis=-1)
  values[:, -3:] = np.inf
  at_least = np.asarray(jax.jit(saliency._count_sparse)(flat, values))
  np.testing.assert_array_equal(at_least, (flat[:, :, None] >= values[:, None, :]).sum(1))
  assert (at_least > (flat[:, :, None] > values[:, None, :]).sum(1)).any()  # ties are present


@pytest.mark.parametrize("seed", range(6))
def test_auc_judd_by_levels_is_the_search_of_the_read_8_bit_map(seed):
  """An 8-bit map as the scorer reads it, AUC-Judd counted by level (`levels=`) against the
  float64 references and, for the mit variant's expectation over its jitter, against the search
  of the same map: few levels (ties everywhere), repeated events, and the > 512 fixated pixels
  of the search's dense path, and one map constant and one without fixations."""
  import jax

  rng = np.random.default_rng(seed)
  h, w = 48, 64
  levels = np.stack([np.floor(smooth(rng, h, w) * rng.uniform(8, 40)) for _ in range(4)])
  levels = np.clip(levels * rng.integers(1, 7), 0, 255)
  levels[2] = 17  # constant
  low, high = levels.min(axis=(1, 2), keepdims=True), levels.max(axis=(1, 2), keepdims=True)
  read = (levels - low) / (high - low + np.finfo(np.float32).eps)
  events = [np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], 1) for n in (40, 900, 25)]
  events.append(np.zeros((0, 2), np.int64))  # no fixations: undefined
  counts = np.stack([counts_from_events(e, (h, w)) for e in events])
  assert (counts[1] > 0).sum() > metrics.SPARSE_SLOTS
  by_level = jax.jit(metrics.auc_judd, static_argnames=("variant", "jitter"))
  for variant, ref in (("ntire2026", ref_ntire), ("mit", ref_mit)):
    got = np.asarray(by_level(read, counts, variant, **NO_JITTER[variant], levels=levels))
    for i in range(4):
      with np.errstate(invalid="ignore", divide="ignore"):  # the constant map's other metrics
        want = ref(read[i], read[i], events[i])["auc_judd"]
      _close("auc_judd", got[i], want)
  expected = np.asarray(by_level(read, counts, "mit", levels=levels))
  searched = np.asarray(metrics.auc_judd(read, counts, "mit"))
  np.testing.assert_allclose(expected, searched, rtol=0, atol=1e-6)
  assert np.isnan(expected[3]) and not np.isnan(expected[2])  # jitter orders a constant map


def test_the_original_variant_is_the_training_scripts_cc_sim_nss():
  """variant="original": the original's validation numbers (trainnew.py's `calc_cc_sim_batch` and
  `torch_nss`), written here in float64 from those functions: the sample std with 1e-7 guards,
  SIM of the sum-normalised maps, NSS weighted by the fixation map; no fixations → NaN. The other
  metrics have no such variant."""
  rng = np.random.default_rng(11)
  pred = rng.random((3, 16, 20)).astype(np.float32) ** 2
  gt = rng.random((3, 16, 20)).astype(np.float32)
  fix = (rng.random((3, 16, 20)) > 0.9).astype(np.int32) * rng.integers(1, 4, (3, 16, 20))
  fix[2] = 0
  p, g, f = (x.reshape(3, -1).astype(np.float64) for x in (pred, gt, fix))

  def z(x):
    return (x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + 1e-7)

  a, b = z(p), z(g)
  want_cc = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-7)
  pn, gn = p / (p.sum(1, keepdims=True) + 1e-7), g / (g.sum(1, keepdims=True) + 1e-7)
  want_sim = np.minimum(pn, gn).sum(1)
  want_nss = (a * f).sum(1) / (f.sum(1) + 1e-7)
  np.testing.assert_allclose(metrics.cc(pred, gt, "original"), want_cc, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics.sim(pred, gt, "original"), want_sim, rtol=1e-5, atol=1e-6)
  nss = np.asarray(metrics.nss(pred, fix, "original"))
  np.testing.assert_allclose(nss[:2], want_nss[:2], rtol=1e-5, atol=1e-5)
  assert np.isnan(nss[2])
  for metric, args in ((metrics.kld, (pred, gt)), (metrics.auc_judd, (pred, fix))):
    with pytest.raises(ValueError, match="variant must be one of"):
      metric(*args, variant="original")
