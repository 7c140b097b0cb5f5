"""Parity with the original PyTorch code, from the golden checkpoints through visage-convert."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from reference import fuse_uint8

from visage_jax.inference import Predictor
from visage_jax.metrics.maps import map_to_uint8

MAP_TOL = 1e-5
TAP_TOL = 5e-5
TAP_LAYERS = (1, 3, 5, 7)


def _cl(x):
  """PyTorch (B, C, T, H, W) → ours (B, T, H, W, C)."""
  return np.moveaxis(x, 1, -1)


def maxerr(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def test_position_embedding_is_interpolated_like_the_original(ckpt_plain, expected):
  from visage_jax import checkpoint as ckpt

  _, model = ckpt.load_model(ckpt_plain)
  assert maxerr(model.backbone.pos_embed[...], expected["pos_embed_t8"]) <= 1e-6


@pytest.mark.parametrize("layer", TAP_LAYERS)
def test_taps_match(plain_outputs, expected, layer):
  k = TAP_LAYERS.index(layer)
  for e, name in enumerate(("e1", "e2")):
    err = maxerr(plain_outputs["taps"][k][e], _cl(expected[f"{name}_feat_l{layer}"]))
    assert err <= TAP_TOL, f"{name} tap {layer}: {err}"


def test_cls_and_film_match(plain_outputs, expected):
  assert maxerr(plain_outputs["cls"][0], expected["e1_cls"]) <= TAP_TOL
  assert maxerr(plain_outputs["expert1_film_gamma"], expected["e1_film_gamma"]) <= MAP_TOL
  assert maxerr(plain_outputs["expert1_film_beta"], expected["e1_film_beta"]) <= MAP_TOL


@pytest.mark.parametrize(
  "ours,theirs",
  [
    ("expert1", "e1_out"),
    ("expert2", "e2_out"),
    ("expert2_aux_p23", "e2_aux_p23"),
    ("expert2_aux_p17", "e2_aux_p17"),
    ("expert2_aux_p11", "e2_aux_p11"),
    ("fused", "fused_logit_a05"),
  ],
)
def test_maps_match(plain_outputs, expected, ours, theirs):
  err = maxerr(plain_outputs[ours], expected[theirs][:, 0])
  assert err <= MAP_TOL, f"{ours}: {err}"


def test_predictor_reproduces_maps(ckpt_plain, clip, expected):
  predictor = Predictor.load(ckpt_plain)
  out = predictor.predict_clip(clip)
  assert set(out) == {"expert1", "expert2", "fused"}
  for k, ref in [("expert1", "e1_out"), ("expert2", "e2_out"), ("fused", "fused_logit_a05")]:
    assert out[k].dtype == np.float32 and out[k].shape == (2, 8, 224, 224)
    assert maxerr(out[k], expected[ref][:, 0]) <= MAP_TOL


def test_predictor_rejects_wrong_clip_shape(ckpt_plain, clip):
  predictor = Predictor.load(ckpt_plain)
  with pytest.raises(ValueError, match=r"takes \(B, 8, 224, 224, 3\)"):
    predictor.predict_clip(clip[:, :4])


def test_uint8_maps_and_their_fusion_match(plain_outputs, expected):
  e1 = map_to_uint8(plain_outputs["expert1"])
  e2 = map_to_uint8(plain_outputs["expert2"])
  fused = fuse_uint8([e1, e2], alpha=0.5)
  for ours, theirs in [(e1, "e1_png_u8"), (e2, "e2_png_u8"), (fused, "fused_png_u8")]:
    diff = np.abs(ours.astype(np.int16) - expected[theirs].astype(np.int16))
    assert diff.max() <= 1, theirs
    assert np.mean(diff > 0) <= 1e-3, f"{theirs}: {np.mean(diff > 0):.2e} of pixels off by one"


def test_fused_mlp_path_matches(ckpt_fused, clip, expected_fusedpath):
  from flax import nnx

  from visage_jax import checkpoint as ckpt

  cfg, model = ckpt.load_model(ckpt_fused)
  assert cfg.model.backbone.mlp_impl == "fused"
  # No fc1/fc2 adapters exist under the fused MLP.
  assert model.backbone.blocks.mlp.fc1.lora_a is None
  taps, cls = nnx.jit(lambda m, x: m.backbone(x))(model, clip)
  for e, name in enumerate(("e1", "e2")):
    err = maxerr(taps[-1][e], _cl(expected_fusedpath[f"{name}_feat_l7_fusedpath"]))
    assert err <= TAP_TOL, f"{name}: {err}"
  assert maxerr(cls[0], expected_fusedpath["e1_cls_fusedpath"]) <= TAP_TOL
  report = json.load(open(os.path.join(ckpt_fused, "conversion_report.json")))
  # 8 blocks × (fc1, fc2) × (A, B) × 2 experts were dropped, and said so.
  assert report["fc_lora_dropped"] == 64
  assert report["fc_lora_max_abs_b"] > 0
