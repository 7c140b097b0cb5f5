"""visage-synth → visage-prepare → the pipeline, and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from visage_jax.data import challenge
from visage_jax.data.pipeline import make_loader, video_names
from visage_jax.data.prepare import data_source, prepare
from visage_jax.data.synth import make_video, write_dataset
from visage_jax.data.video import VideoError, open_video, resize_frames
from visage_jax.writers import write_mp4

FRAMES, SIZE, SEED = 40, (72, 128), 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth") / "ds")
  write_dataset(root, videos=4, frames=FRAMES, size=SIZE, seed=SEED)
  return root


@pytest.fixture(scope="module")
def prepared(synth, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("prep") / "out")
  report = prepare("ntire2026", synth, out, size=64)
  assert report["splits"] == {"train": 3, "public_test": 1} and report["stride"] == 6
  return out


def test_synth_is_deterministic_and_decodes_to_what_was_encoded(synth, tmp_path):
  other = str(tmp_path / "again")
  write_dataset(other, videos=4, frames=FRAMES, size=SIZE, seed=SEED)
  a = json.load(open(os.path.join(synth, "FixationsTrain/Train/synth_000/fixations.json")))
  b = json.load(open(os.path.join(other, "FixationsTrain/Train/synth_000/fixations.json")))
  assert a == b
  frames, sal, _ = make_video(SEED * 100_003 + 0, FRAMES, SIZE)
  video = open_video(os.path.join(synth, "Videos", "synth_000.mp4"))
  assert (video.num_frames, video.height, video.width) == (FRAMES, *SIZE)
  err = np.abs(video.frames(range(FRAMES)).astype(int) - frames.astype(int))
  assert err.mean() < 3.0, err.mean()  # H.264 at crf 12
  gt = open_video(os.path.join(synth, "SaliencyTrain/Train/synth_000.mp4"))
  from visage_jax.data.video import to_gray

  assert np.abs(to_gray(gt.frames(range(FRAMES))).astype(int) - sal).max() <= 1  # lossless


def test_prepared_examples_read_back(prepared, synth):
  ds, info = data_source(prepared, "train")
  assert info.metadata["stride"] == 6 and len(ds) == 3
  layout = challenge.ChallengeLayout(synth)
  for i in range(len(ds)):
    ex = ds[i]
    name = ex["name"].decode()
    entry = layout.entry(name, "train")
    video = open_video(entry.video)
    idx = np.arange(0, video.num_frames, 6)
    assert ex["frame_index"].tolist() == idx.tolist()
    assert ex["frames"].shape == (len(idx), 64, 64, 3)
    want = resize_frames(video.frames(idx), 64)
    np.testing.assert_array_equal(ex["frames"], want)
    points = challenge.load_fixations(entry.fixations, video.num_frames, *SIZE)
    for t, k in enumerate(idx):
      src = ex["fixations"][ex["fixations"][:, 0] == t][:, 1:]
      np.testing.assert_array_equal(src, points[k])
      model = ex["fixations_model"][ex["fixations_model"][:, 0] == t][:, 1:]
      want_y = [int(y * 64 / SIZE[0]) for y, _ in points[k]]
      want_x = [int(x * 64 / SIZE[1]) for _, x in points[k]]
      assert model[:, 0].tolist() == want_y and model[:, 1].tolist() == want_x


def test_pipeline_windows_and_fixation_maps(prepared):
  ds, _ = data_source(prepared, "train")
  loader = make_loader(ds, num_frames=8, global_batch=3, seed=1, num_epochs=2)
  batches = list(loader)
  assert len(batches) == 2
  for b in batches:
    assert b["frames"].shape == (3, 8, 64, 64, 3) and b["frames"].dtype == np.uint8
    assert sorted(video_names(b)) == ["synth_000", "synth_001", "synth_002"]
    assert b["saliency"].max() <= 1.0
  ex = {d["name"].decode(): d for d in (ds[i] for i in range(len(ds)))}
  b = batches[0]
  name = video_names(b)[0]
  fix = ex[name]["fixations_model"]
  t0 = int(b["start"][0])
  for y, x in fix[fix[:, 0] == t0][:, 1:]:
    # the 3×3 max filter spreads each fixation over its neighbourhood
    patch = b["fixations"][0, 0, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
    assert (patch >= 1).all()


def _copy(synth, tmp_path):
  root = str(tmp_path / "ds")
  shutil.copytree(synth, root)
  return root


def _expect_failure(root, tmp_path, *words):
  out = str(tmp_path / "prepared")
  with pytest.raises((challenge.DataError, VideoError)) as info:
    prepare("ntire2026", root, out, size=32)
  for w in words:
    assert w in str(info.value), str(info.value)
  assert not os.path.exists(out)
  assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]
  # with skip_bad the video is left out and listed next to the output
  report = prepare("ntire2026", root, out, size=32, skip_bad=True)
  skipped = json.load(open(os.path.join(out, "skipped.json")))["skipped"]
  assert skipped == report["skipped"] and len(skipped) == 1
  return skipped[0]


def test_truncated_video(synth, tmp_path):
  root = _copy(synth, tmp_path)
  path = os.path.join(root, "Videos", "synth_001.mp4")
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  assert _expect_failure(root, tmp_path, path)["video"] == "synth_001"


def test_saliency_frame_count_differs(synth, tmp_path):
  root = _copy(synth, tmp_path)
  path = os.path.join(root, "SaliencyTrain", "Train", "synth_002.mp4")
  write_mp4(path, np.zeros((FRAMES - 3, *SIZE), np.uint8), 30, lossless=True)
  _expect_failure(root, tmp_path, path, f"{FRAMES - 3} frames")


@pytest.mark.parametrize("problem", ["outside", "count"])
def test_bad_fixations(synth, tmp_path, problem):
  root = _copy(synth, tmp_path)
  path = os.path.join(root, "FixationsTrain", "Train", "synth_000", "fixations.json")
  fix = json.load(open(path))
  if problem == "outside":
    fix[5].append([SIZE[0] + 7, 3])
    words = (path, "frame 5", "outside")
  else:
    fix = fix[:-1]
    words = (path, f"{FRAMES - 1} frame entries")
  json.dump(fix, open(path, "w"))
  _expect_failure(root, tmp_path, *words)


def test_video_in_split_but_missing(synth, tmp_path):
  root = _copy(synth, tmp_path)
  path = os.path.join(root, "Videos", "synth_001.mp4")
  os.remove(path)
  _expect_failure(root, tmp_path, path, "missing")
