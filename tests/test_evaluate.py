"""The evaluation step: sharded equals single-device; aggregation both ways; undefined frames."""

from __future__ import annotations

import numpy as np
from conftest import run_helper

from visage_jax import evaluate


def test_sharded_eval_step_matches_single_device(ckpt_plain):
  out = run_helper("sharded_eval.py", ckpt_plain)
  assert out["devices"] == 8
  assert "data" in out["batch_spec"] and "fsdp" in out["batch_spec"]
  assert out["frame_max_diff"] <= 1e-6, out
  assert out["video_max_diff"] <= 1e-6, out
  # the frame without fixations is excluded from NSS and counted; the padded ones are not frames
  assert out["undefined_nss_frames"] == 1


def test_aggregator_challenge_and_pooled():
  agg = evaluate.Aggregator()

  def per(values):
    return {"fused": {"ntire2026": {"cc": np.asarray(values, float)}}}

  agg.add("a", per([0.2, 0.4, np.nan, 9.0]), [True, True, True, False])  # 9.0 is padding
  agg.add("a", per([0.6]), [True])
  agg.add("b", per([1.0]), [True])
  agg.add("c", per([np.nan, np.nan]), [True, True])
  rep = agg.report()
  cc = rep["overall"]["fused"]["ntire2026"]["cc"]
  assert rep["per_video"]["a"]["frames"] == 4
  assert np.isclose(rep["per_video"]["a"]["fused"]["ntire2026"]["cc"], 0.4)
  assert rep["per_video"]["a"]["fused"]["ntire2026"]["undefined_frames"] == {"cc": 1}
  assert rep["per_video"]["c"]["fused"]["ntire2026"]["cc"] is None
  assert np.isclose(cc["challenge"], (0.4 + 1.0) / 2)
  assert np.isclose(cc["pooled"], (0.2 + 0.4 + 0.6 + 1.0) / 4)
  assert cc["undefined_frames"] == 3 and cc["frames"] == 4 and cc["videos_without_value"] == 1
  assert "fused" in evaluate.format_table(rep, "ntire2026")
