"""The trainer's validation against the challenge scorer's float64 references (test_metrics.py) on
the model's own maps of the original's validation windows, alone and fused with a partner."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_helper
from helpers.small import small_config
from test_metrics import ref_ntire

from visage_jax import train_step
from visage_jax.data.prepare import data_source
from visage_jax.data.video import normalize
from visage_jax.data.windows import validation_windows
from visage_jax.models.visage import logit_fusion
from visage_jax.validation import make_validator

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


def _close(got, want, what):
  for metric, value in want.items():
    assert abs(got[metric] - value) <= 1e-5 * max(1.0, abs(value)), (what, metric, got, want)


@pytest.mark.parametrize("expert", [1, 2])
def test_validation_scores_the_models_windows_as_the_challenge_does(trainset, expert):
  """Expert 1 alone, then Expert 2 fused with a fixed Expert 1 (the partner's maps computed
  once); 3 windows a batch, so the last of the 8 is padding that must not count."""
  cfg = small_config(expert, 1)
  cfg.train.batch_size = 3
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

  want = _expected(trainset, cfg, maps_of)
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


def test_fused_validation_on_a_mesh_equals_one_device(trainset):
  """The partner's pass and the scoring split over 2 × 2 (data × fsdp) emulated devices, the
  partner's weights laid out by mesh.rules as the trained model's: the numbers of one device."""
  out = run_helper("sharded_validation.py", trainset)
  assert out["map"] == ["fused", "fused"] and "expert2/cc" in out["reported"], out["reported"]
  assert out["max_rel_diff"] <= 1e-5, out
  assert out["qkv_specs"] and all("fsdp" in s for s in out["qkv_specs"].values()), out
  assert out["devices_holding_qkv"] == [4], out
