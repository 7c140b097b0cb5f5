"""The trainer's validation against the challenge scorer's float64 references (test_metrics.py) on
the model's own maps of the original's validation windows, alone and fused with a partner."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_helper
from helpers.small import small_config
from test_metrics import ref_ntire

from visage_jax.data.prepare import data_source
from visage_jax.data.video import normalize
from visage_jax.data.windows import validation_windows
from visage_jax.evaluation.validation import make_validator
from visage_jax.models.visage import logit_fusion
from visage_jax.training import step as train_step

SPLIT = "public_test"


def _read(img):
  """The challenge's read of a map (bench.py's read_sm), in float64."""
  img = np.asarray(img, np.float64)
  return (img - img.min()) / (img.max() - img.min() + np.finfo(np.float32).eps)


def _expected(prepared, cfg, maps_of) -> dict:
  """Per frame of every window, `ref_ntire`; the mean over a video's frames, then over videos.
  maps_of(frames uint8 (T, S, S, 3)) → {name: (T, S, S)}."""
  source, _ = data_source(prepared, SPLIT)
  per_video = {}
  for i in range(len(source)):
    ex = source[i]
    fix = ex["fixations_model"]
    rows = []
    for idx, mask in validation_windows(len(ex["frame_index"]), cfg.model.backbone.num_frames):
      maps = maps_of(ex["frames"][idx])
      for t in np.nonzero(mask)[0]:
        events = fix[fix[:, 0] == idx[t]][:, 1:]
        g = _read(ex["saliency"][idx[t]])
        rows.append({k: ref_ntire(_read(m[t]), g, events) for k, m in maps.items()})
    per_video[ex["name"].decode()] = rows
  out = {}
  for k in rows[0]:
    for metric in ("cc", "sim", "nss", "auc_judd", "kld"):
      means = [np.nanmean([r[k][metric] for r in rows]) for rows in per_video.values()]
      out.setdefault(k, {})[metric] = float(np.mean(means))
  return out


def _original_window(maps: dict, saliency, counts) -> dict:
  """trainnew.py's `calc_cc_sim_batch` and `torch_nss` of one window's real frames in float64
  PyTorch: {map: (CC, SIM, NSS)}. maps {name: (n, S, S)}, saliency uint8 and counts (n, S, S)."""
  import torch
  import torch.nn.functional as F

  n = len(saliency)
  gt = torch.tensor(saliency, dtype=torch.float64).reshape(n, -1) / 255
  events = torch.tensor(counts, dtype=torch.float64)[:, None]
  f = F.max_pool2d(events, kernel_size=3, stride=1, padding=1).reshape(n, -1)
  out = {}
  for k, m in maps.items():
    p = torch.tensor(m, dtype=torch.float64).reshape(n, -1)
    a = (p - p.mean(1, keepdim=True)) / (p.std(1, keepdim=True) + 1e-7)
    b = (gt - gt.mean(1, keepdim=True)) / (gt.std(1, keepdim=True) + 1e-7)
    cc = (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-7)
    pn, gn = p / (p.sum(1, keepdim=True) + 1e-7), gt / (gt.sum(1, keepdim=True) + 1e-7)
    sim = torch.minimum(pn, gn).sum(1)
    nss = (a * f).sum(1) / (f.sum(1) + 1e-7)
    valid = f.sum(1) > 0
    out[k] = (cc.mean().item(), sim.mean().item(), nss[valid].mean().item() if valid.any() else 0)
  return out


def _frame_weighted(windows: list[tuple[int, dict]]) -> dict:
  """trainnew.py's sums: each window's means times its real frames, over all the frames."""
  frames = sum(n for n, _ in windows)
  out = {}
  for n, means in windows:
    for k, values in means.items():
      acc = out.setdefault(k, dict.fromkeys(("cc", "sim", "nss"), 0.0))
      for metric, v in zip(acc, values):
        acc[metric] += n * v / frames
  return out


def _original_expected(prepared, cfg, maps_of) -> dict:
  """The original's validation loop over the split's windows (`_original_window`)."""
  source, _ = data_source(prepared, SPLIT)
  windows = []
  for i in range(len(source)):
    ex = source[i]
    fix, size = ex["fixations_model"], ex["frames"].shape[1]
    for idx, mask in validation_windows(len(ex["frames"]), cfg.model.backbone.num_frames):
      real = idx[mask]
      counts = np.zeros((len(real), size, size))
      for j, t in enumerate(real):
        np.add.at(counts[j], tuple(fix[fix[:, 0] == t][:, 1:].T), 1)
      maps = {k: m[mask] for k, m in maps_of(ex["frames"][idx]).items()}
      windows.append((len(real), _original_window(maps, ex["saliency"][real], counts)))
  return _frame_weighted(windows)


def _close(got, want, what):
  for metric, value in want.items():
    assert abs(got[metric] - value) <= 1e-5 * max(1.0, abs(value)), (what, metric, got, want)


@pytest.mark.slow
@pytest.mark.parametrize("expert, metrics", [(1, "challenge"), (2, "challenge"), (2, "original")])
def test_validation_scores_the_models_windows_as_the_challenge_or_the_original_does(
  trainset, expert, metrics
):
  """Expert 1 alone, then Expert 2 fused with a fixed Expert 1 (the partner's maps computed
  once), by the challenge's scorer and by the original's validation loop; 3 windows a batch, so
  the last of the 8 is padding that must not count."""
  cfg = small_config(expert, 1)
  cfg.train.batch_size = 3
  cfg.train.val_metrics = metrics
  model = train_step.init_model(cfg, seed=1)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  graphdef_eval = train_step.eval_graphdef(graphdef, cfg, trainable, stats, frozen)
  name = train_step.expert_name(cfg)
  partner = None
  if expert == 2:
    partner = ("expert1", train_step.init_model(small_config(1, 1), seed=7))
  validate = make_validator(graphdef_eval, cfg, trainset, SPLIT, partner=partner, log=print)
  got = validate(trainable, stats, frozen)

  train_step.set_batchnorm_mode(model, train=False)
  if partner:
    train_step.set_batchnorm_mode(partner[1], train=False)

  def maps_of(frames):
    clip = normalize(frames)[None]
    own = np.asarray(model(clip)[name])[0]
    if partner is None:
      return {name: own}
    other = np.asarray(partner[1](clip)["expert1"])[0]
    fusion = logit_fusion((other, own), cfg.model.fusion_alpha, cfg.model.fusion_eps)
    return {name: own, "fused": np.asarray(fusion)}

  want = (_expected if metrics == "challenge" else _original_expected)(trainset, cfg, maps_of)
  reported = {"cc", "sim", "nss"} | ({"auc_judd", "kld"} if metrics == "challenge" else set())
  assert got["metrics"] == metrics and reported == set(want[name]) <= set(got), (got, want)
  assert metrics == "challenge" or "auc_judd" not in got, got
  assert got["videos"] == 2 and got["frames"] == 2 * 4 * 4  # 4 windows of 4 frames a video
  if partner is None:
    assert got["map"] == name
    _close(got, want[name], name)
  else:
    assert got["map"] == "fused"
    _close(got, want["fused"], "fused")
    _close(got[name], want[name], name)
  # the weights are an argument: other weights, other numbers, from the same validator
  moved = validate(*train_step.split(train_step.init_model(cfg, seed=2), cfg)[1:])
  assert abs(moved["cc"] - got["cc"]) > 1e-4


@pytest.mark.slow
def test_fused_validation_on_a_mesh_equals_one_device(trainset):
  """The partner's pass and the scoring split over 2 × 2 (data × fsdp) emulated devices, the
  partner's weights laid out by mesh.rules as the trained model's: the numbers of one device."""
  out = run_helper("sharded_validation.py", trainset)
  assert out["map"] == ["fused", "fused"] and "expert2/cc" in out["reported"], out["reported"]
  assert out["max_rel_diff"] <= 1e-5, out
  assert out["qkv_specs"] and all("fsdp" in s for s in out["qkv_specs"].values()), out
  assert out["devices_holding_qkv"] == [4], out


def test_original_metrics_of_frames_without_fixations_and_padding():
  """`original_metrics` and `OriginalMeans` on made-up windows against `_original_window`: frames
  without fixations leave a window's NSS to the others, a window without any counts 0 for NSS but
  its frames for CC and SIM, padded frames count for nothing; events on the border and repeated
  on one pixel."""
  import jax

  from visage_jax.evaluation.validation import OriginalMeans, original_metrics

  rng = np.random.default_rng(3)
  b, t, s = 3, 4, 12
  pred = rng.random((b, t, s, s)).astype(np.float32) ** 3
  saliency = (rng.random((b, t, s, s)) ** 2 * 255).astype(np.uint8)
  counts = (rng.random((b, t, s, s)) > 0.97).astype(np.int32)
  counts[0, :, 0, 0], counts[0, 1, 5, 7] = 1, 3
  counts[1, 2] = 0  # a frame without fixations
  counts[2] = 0  # a window without any
  mask = np.ones((b, t), bool)
  mask[1, 3:] = False  # padding: its own fixations must not count
  feed = {"saliency": saliency, "counts": counts}
  scores = jax.device_get(jax.jit(original_metrics)(pred, feed))
  agg = OriginalMeans()
  windows = []
  for w in range(b):
    agg.add(f"v{w}", {"m": {k: v[w] for k, v in scores.items()}}, mask[w])
    m = mask[w]
    means = _original_window({"m": pred[w][m]}, saliency[w][m], counts[w][m])
    windows.append((int(m.sum()), means))
  got, frames, videos = agg.means("m")
  want = _frame_weighted(windows)
  assert (frames, videos) == (11, 3)
  for metric, value in want["m"].items():
    assert abs(got["m"][metric] - value) <= 1e-6 * max(1.0, abs(value)), (metric, got, want)


def test_spilled_maps_read_back_what_was_written_and_leave_nothing(tmp_path):
  from visage_jax.evaluation.validation import SpilledMaps

  rng = np.random.default_rng(0)
  arrays = [rng.random((3, 4, 5, 5)).astype(np.float32) for _ in range(4)]
  maps = SpilledMaps(str(tmp_path))
  for a in arrays:
    maps.append(a)
  assert os.listdir(tmp_path) == []  # an unnamed file: gone however the process ends
  assert len(maps) == 4
  for i in (2, 0, 3, 1):
    np.testing.assert_array_equal(maps[i], arrays[i])
  for got, want in zip(maps, arrays, strict=True):  # in order, as validation reads them
    np.testing.assert_array_equal(got, want)
  with pytest.raises(IndexError):
    maps[4]
  with pytest.raises(ValueError, match=r"maps of shape \(3, 4, 5\) among ones of \(3, 4, 5, 5\)"):
    maps.append(arrays[0][..., 0])
  maps.close()
