"""The evaluation step: sharded equals single-device; aggregation both ways; undefined frames."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_helper

from visage_jax.evaluation import evaluate
from visage_jax.evaluation import records as eval_records


@pytest.mark.slow
def test_sharded_eval_step_matches_single_device(ckpt_small):
  out = run_helper("sharded_eval.py", ckpt_small)
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


def test_the_table_counts_its_videos_in_words():
  agg = evaluate.Aggregator()
  agg.add("a", {"fused": {"ntire2026": {"cc": np.asarray([0.5])}}}, [True])
  assert "(1 video)" in evaluate.format_table(agg.report(), "ntire2026").splitlines()[0]
  agg.add("b", {"fused": {"ntire2026": {"cc": np.asarray([0.7])}}}, [True])
  assert "(2 videos)" in evaluate.format_table(agg.report(), "ntire2026").splitlines()[0]


def test_a_record_read_back_reports_what_was_scored(tmp_path):
  """A video's numbers written to its record and read back (as a rerun, or process 0 merging
  every process's videos, does) give the same report to the last bit: NaNs, padding left out,
  windows in order; the settings come back as written; a record cut short reads as none."""
  rng = np.random.default_rng(0)
  scored = evaluate.Aggregator()
  for video, windows in (("a", 3), ("b", 1)):
    for _ in range(windows):
      values = rng.normal(size=(2, 5))
      values[0, 1] = np.nan
      per = {s: {"mit": {"cc": values[0], "nss": values[1]}} for s in ("fused", "expert1")}
      scored.add(video, per, [True] * 4 + [False])
  settings = {"checkpoint": "/c", "stride": 6, "dtype": None, "source_fps": 25.0}
  read = evaluate.Aggregator()
  for video in scored.videos():
    path = eval_records.record_path(str(tmp_path), video)
    eval_records.write_record(path, settings, scored.frames_of(video))
    got_settings, frames = eval_records.read_record(path)
    assert got_settings == settings
    assert eval_records.read_record(path, numbers=False) == (settings, None)
    read.add_frames(video, frames)
  assert read.report() == scored.report()  # == on floats: the same bits
  assert sorted(os.listdir(tmp_path / eval_records.RECORDS_DIR)) == ["a.npz", "b.npz"]
  path = eval_records.record_path(str(tmp_path), "a")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  assert eval_records.read_record(path) is None


def test_fixation_maps_count_points_as_the_host_does():
  """The count maps made on the device from padded points equal `challenge.fixation_counts`'s
  (numpy, on the host): repeated events add up, empty frames stay zero, -1 rows add nothing."""
  import jax

  from visage_jax.data.challenge import fixation_counts
  from visage_jax.inference.stream import padded_points

  rng = np.random.default_rng(0)
  h, w = 37, 53
  windows = []
  for _ in range(3):
    frames = [rng.integers(0, (h, w), (rng.integers(0, 90), 2)).astype(np.int32) for _ in range(4)]
    frames[1] = np.concatenate([frames[1], frames[1][:5], [[h - 1, w - 1], [0, 0]]]).astype(
      np.int32
    )
    frames[2] = np.zeros((0, 2), np.int32)
    windows.append(frames)
  points = padded_points(windows)
  assert points.shape == (3, 4, 128, 2) and points.dtype == np.int32
  maps = np.asarray(jax.jit(evaluate.fixation_maps, static_argnums=1)(points, (h, w)))
  want = np.stack([fixation_counts(frames, range(4), h, w) for frames in windows])
  np.testing.assert_array_equal(maps, want)
  assert maps.dtype == np.int32 and maps[:, 1].max() >= 2 and maps[:, 2].sum() == 0


def test_padded_points_take_few_shapes():
  from visage_jax.inference.stream import POINT_SLOTS, padded_points

  one = [[np.array([[3, 4]], np.int32)]]
  assert padded_points(one).shape == (1, 1, POINT_SLOTS, 2)
  np.testing.assert_array_equal(padded_points(one)[0, 0, :2], [[3, 4], [-1, -1]])
  many = [[np.zeros((POINT_SLOTS + 1, 2), np.int32), np.zeros((0, 2), np.int32)]]
  assert padded_points(many).shape == (1, 2, 2 * POINT_SLOTS, 2)


def test_window_scores_keep_window_order_while_sauc_runs_on_threads(monkeypatch):
  """Windows whose s-AUC finishes out of order still reach the aggregator in window order, each
  with its s-AUC."""
  import concurrent.futures
  import time
  from types import SimpleNamespace

  def slow_sauc(levels, per_frame, batch, b, video, protocol):
    time.sleep(0.05 * (b % 3 == 0))  # every third window finishes last
    per_frame["fused"]["mit"]["sauc"] = np.full(2, float(batch.indices[b, 0]))

  monkeypatch.setattr(evaluate, "shuffled_auc", slow_sauc)
  monkeypatch.setattr(evaluate, "_SAUC_POOL", concurrent.futures.ThreadPoolExecutor(4))
  agg = evaluate.Aggregator()
  scores = evaluate.WindowScores(agg, "v", protocol={})
  for start in range(0, 24, 4):  # batches of two windows of two frames
    batch = SimpleNamespace(indices=np.arange(start, start + 4).reshape(2, 2), mask=np.ones((2, 2)))
    out = {"metrics": {"fused": {"mit": {"cc": np.ones((2, 2))}}}, "sauc_levels": {}}
    for b in range(2):
      scores.add(out, batch, b)
  scores.finish()
  sauc = agg.frames_of("v")[("fused", "mit", "sauc")]  # each window's two frames, in order
  assert list(sauc) == [float(i) for i in range(0, 24, 2) for _ in range(2)]
