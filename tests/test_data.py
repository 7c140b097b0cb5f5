"""visage-synth → visage-prepare → the pipeline, and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from visage_jax.data import challenge
from visage_jax.data.encode import write_mp4
from visage_jax.data.pipeline import make_loader, video_names
from visage_jax.data.prepare import (
  data_source,
  dataset_dir,
  prepare,
  prepared_size,
  prepared_splits,
)
from visage_jax.data.synth import make_video, write_dataset
from visage_jax.data.video import VideoError, open_video, resize_frames

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
  # the output and the dataset folder inside it (the path reported) are the same dataset
  for path in (out, report["path"]):
    assert dataset_dir(path) == report["path"]
    assert prepared_splits(path) == report["splits"] and prepared_size(path) == 64
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


def test_visage_prepare_says_each_video_and_where_the_dataset_is(synth, tmp_path):
  """stdout: one line, naming the data.dir to train on; stderr: each video checked, then written;
  nothing of TFDS's (its temporary folder, progress bars, the custom-config warning)."""
  import subprocess
  import sys

  from conftest import REPO

  out = str(tmp_path / "prep")
  res = subprocess.run(
    [sys.executable, "-m", "visage_jax.cli.prepare", "--layout=ntire2026", f"--root={synth}",
     f"--output={out}", "--size=32"],
    capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300,
  )  # fmt: skip
  assert res.returncode == 0, res.stderr
  assert res.stdout == (
    f"prepared 4 videos (train 3, public_test 1) into {dataset_dir(out)} "
    f"(visage-train --config.data.dir={out})\n"
  )
  lines = res.stderr.splitlines()  # checked split by split; written in the order TFDS takes
  names = {f"synth_{k:03d}" for k in range(4)}
  checked = [x.removeprefix("checked ").split(" (") for x in lines[:4]]
  assert {n for n, _ in checked} == names
  assert [c for _, c in checked] == ["1 of 3)", "2 of 3)", "3 of 3)", "1 of 1)"]
  written = [x.removeprefix("writing ").split(" (") for x in lines[4:]]
  assert {n for n, _ in written} == names and len(lines) == 8
  assert [c for _, c in written] == [f"{i} of 4)" for i in (1, 2, 3, 4)]


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


def _write_avi(path, frames, fps=30):
  import fractions

  import av

  with av.open(path, mode="w", format="avi") as c:
    s = c.add_stream("mpeg4", rate=fractions.Fraction(fps))
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.options = {"qscale": "2"}
    for f in frames:
      for p in s.encode(__import__("av").VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def test_dhf1k_layout(tmp_path):
  from visage_jax.data.encode import write_png

  root = tmp_path / "dhf1k"
  (root / "video").mkdir(parents=True)
  for k in (1, 601):
    frames, sal, fix = make_video(k, 14, (48, 64))
    _write_avi(str(root / "video" / f"{k:03d}.AVI"), frames)
    for sub in ("maps", "fixation"):
      (root / "annotation" / f"{k:04d}" / sub).mkdir(parents=True)
    for i in range(14):
      write_png(str(root / "annotation" / f"{k:04d}" / "maps" / f"{i + 1:04d}.png"), sal[i])
      binary = np.zeros((48, 64), np.uint8)
      for y, x in fix[i]:
        binary[y, x] = 255
      write_png(str(root / "annotation" / f"{k:04d}" / "fixation" / f"{i + 1:04d}.png"), binary)
  out = str(tmp_path / "prepared")
  report = prepare("dhf1k", str(root), out, size=32)
  assert report["splits"] == {"train": 1, "validation": 1}
  ds, _ = data_source(out, "validation")
  ex = ds[0]
  assert ex["name"] == b"601" and ex["frames"].shape == (3, 32, 32, 3)  # frames 0, 6, 12
  _, _, fix = make_video(601, 14, (48, 64))
  got = ex["fixations"][ex["fixations"][:, 0] == 1][:, 1:]
  assert sorted(map(tuple, got.tolist())) == sorted(set(map(tuple, fix[6])))  # binary: unique


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_of_the_same_global_batches(tmp_path):
  import socket
  import subprocess
  import sys

  from conftest import REPO

  root = str(tmp_path / "ds")
  write_dataset(root, videos=10, frames=30, size=(36, 64), seed=9)  # 8 train videos
  out = str(tmp_path / "prepared")
  prepare("ntire2026", root, out, size=32)
  helper = os.path.join(REPO, "tests", "helpers", "two_process_data.py")
  env = dict(os.environ, PYTHONPATH=REPO)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  one = str(tmp_path / "one.json")
  res = subprocess.run(
    [sys.executable, helper, out, str(port), "0", "1", "4", one],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  two = str(tmp_path / "two.json")
  procs = [
    subprocess.Popen(
      [sys.executable, helper, out, str(port), str(i), "2", "2", two],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  a, b = json.load(open(one)), json.load(open(two))
  assert a["processes"] == 1 and b["processes"] == 2 and a["devices"] == b["devices"] == 4
  assert len(a["batches"]) == 4  # 8 videos / 4 per global batch × 2 epochs
  assert a["batches"] == b["batches"]


def test_sampler_shards_are_disjoint_and_cover_the_global_batch():
  from visage_jax.data.pipeline import GlobalBatchSampler

  one = GlobalBatchSampler(11, 4, seed=2, num_epochs=3)
  parts = [
    GlobalBatchSampler(11, 4, process_index=p, process_count=2, seed=2, num_epochs=3)
    for p in range(2)
  ]
  assert len(one) == 3 * 2 * 4 and all(len(p) == 3 * 2 * 2 for p in parts)
  for step in range(6):
    whole = {one[step * 4 + j].record_key for j in range(4)}
    shards = [{p[step * 2 + j].record_key for j in range(2)} for p in parts]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == whole
  epoch0 = {one[i].record_key for i in range(8)}
  assert len(epoch0) == 8  # no video twice within an epoch


def test_pipeline_state_resumes_exactly(prepared):
  ds, _ = data_source(prepared, "train")
  loader = make_loader(ds, num_frames=8, global_batch=3, seed=4)
  it = iter(loader)
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  again = iter(make_loader(ds, num_frames=8, global_batch=3, seed=4))
  again.set_state(state)
  for w in want:
    got = next(again)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def test_a_hanging_decoder_becomes_an_error_naming_the_file():
  import time

  from visage_jax.data.video import _guarded

  with pytest.raises(VideoError, match=r"some\.mp4 frame 3: decoder gave no answer within 0 s"):
    _guarded(lambda: time.sleep(5), 0.2, "some.mp4 frame 3")


def test_a_file_without_a_video_stream_is_named_as_such(tmp_path):
  """A file FFmpeg opens that holds no pictures (here a WAV sound) is refused before decord."""
  import wave

  path = str(tmp_path / "sound.mp4")
  with wave.open(path, "wb") as w:
    w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
    w.writeframes(bytes(1600))
  with pytest.raises(VideoError) as info:
    open_video(path)
  assert str(info.value) == f"{path}: no video stream"


def test_a_cut_off_video_is_named_as_such_in_one_line(tmp_path):
  """An mp4 whose index comes first (faststart, as streamed files are) cut off at 60 %: decord's
  own log prefix and bare FFmpeg error number become words."""
  import av

  whole, cut = str(tmp_path / "whole.mp4"), str(tmp_path / "cut.mp4")
  frames = np.random.default_rng(0).integers(0, 255, (30, 64, 96, 3), np.uint8)
  with av.open(whole, "w", options={"movflags": "faststart"}) as out:
    stream = out.add_stream("libx264", rate=30, options={"crf": "30"})
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    for f in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(stream.encode())
  data = open(whole, "rb").read()
  open(cut, "wb").write(data[: len(data) * 6 // 10])
  with pytest.raises(VideoError) as info:
    open_video(cut).frames(list(range(30)))
  message = str(info.value)
  assert message.startswith(f"{cut}: ") and "\n" not in message, message
  assert "truncated or corrupt" in message and ".cc:" not in message, message


def test_an_offset_past_a_videos_frames_is_refused_naming_it(synth, tmp_path):
  """Before issue 33, `--offset=1000` on 30-frame videos wrote one frame per video, silently."""
  out = str(tmp_path / "prepared")
  with pytest.raises(challenge.DataError, match=rf"\.mp4: --offset={FRAMES} lies past its "):
    prepare("ntire2026", synth, out, size=32, offset=FRAMES)
  assert not os.path.exists(out)
  report = prepare("ntire2026", synth, out, size=32, offset=FRAMES - 1)  # the last frame: fine
  assert report["offset"] == FRAMES - 1 and not report["skipped"]
