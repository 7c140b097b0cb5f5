"""visage-predict on real mp4 files: one map per frame, resumable after SIGKILL, broken input
reported and skipped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, run_cli

from visage_jax.data.encode import write_mp4
from visage_jax.data.synth import make_video
from visage_jax.data.video import open_video

# one worker runs the whole module: its module fixtures are computed once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("predict")]

FRAMES, SIZE = 26, (72, 128)  # 26 is not a multiple of 6 · num_frames (48)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  for i in range(3):
    frames, _, _ = make_video(40 + i, FRAMES, SIZE)
    write_mp4(str(root / f"clip{i}.mp4"), frames, 30)
  return str(root)


def _predict(ckpt, output, *inputs, wait=True):
  """visage-predict; an input starting with "--" is passed as a flag."""
  cmd = [
    sys.executable,
    "-m",
    "visage_jax.cli.predict",
    f"--checkpoint={ckpt}",
    f"--output={output}",
  ]
  cmd += [i if i.startswith("--") else f"--input={i}" for i in inputs]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  if not wait:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _tree(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      if f.endswith(".png"):
        p = os.path.join(d, f)
        out[os.path.relpath(p, root)] = open(p, "rb").read()
  return out


@pytest.fixture(scope="module")
def reference(videos, ckpt_small, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("pred") / "ref")
  res = _predict(ckpt_small, out, videos)
  assert res.returncode == 0, res.stderr[-3000:]
  return out


def test_one_map_per_frame_named_sized_and_accepted(reference, videos):
  from PIL import Image

  for i in range(3):
    folder = os.path.join(reference, f"clip{i}")
    assert sorted(os.listdir(folder)) == [f"eyeMap_{k:05d}.png" for k in range(1, FRAMES + 1)]
    img = Image.open(os.path.join(folder, "eyeMap_00026.png"))
    assert img.mode == "L" and img.size == (SIZE[1], SIZE[0])
    maps = open_video(os.path.join(reference, f"clip{i}.mp4"))
    assert maps.num_frames == FRAMES and abs(maps.fps - 30) < 1e-6
    assert open_video(os.path.join(reference, "overlays", f"clip{i}.mp4")).num_frames == FRAMES
  env = dict(os.environ, PYTHONPATH=REPO)
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "visage_jax.cli.check_submission",
      f"--predictions={reference}",
      f"--videos={videos}",
    ],
    capture_output=True,
    text=True,
    env=env,
  )
  assert res.returncode == 0, res.stdout + res.stderr


def test_sigkill_then_rerun_equals_an_uninterrupted_run(reference, videos, ckpt_small, tmp_path):
  out = str(tmp_path / "out")
  proc = _predict(ckpt_small, out, videos, wait=False)
  deadline = time.time() + 600
  while not os.path.isdir(os.path.join(out, "clip0")) and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.isdir(os.path.join(out, "clip0"))
  assert not os.path.isdir(os.path.join(out, "clip2"))  # killed before the end
  res = _predict(ckpt_small, out, videos)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "already complete" in res.stdout
  assert _tree(out) == _tree(reference)
  records = sorted(os.listdir(os.path.join(out, ".visage-predict")))
  assert records == ["clip0.json", "clip1.json", "clip2.json"]  # the killed video's staging gone


def test_sigterm_removes_the_video_being_written(ckpt_small, tmp_path):
  """A scheduler's SIGTERM mid-video ends like Ctrl-C: one line, and no temporary file left."""
  frames, _, _ = make_video(7, 150, SIZE)
  long = str(tmp_path / "long.mp4")
  write_mp4(long, frames, 30)
  out = str(tmp_path / "out")
  proc = _predict(ckpt_small, out, long, wait=False)
  partial = os.path.join(out, ".visage-predict", "long.partial", "fused")
  deadline = time.time() + 300
  while not (os.path.isdir(partial) and os.listdir(partial)) and time.time() < deadline:
    time.sleep(0.05)
  assert os.listdir(partial), "visage-predict never began writing"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert err.strip().splitlines()[-1].endswith("interrupted: unfinished outputs removed"), err
  assert "Traceback" not in err
  left = [os.path.join(d, f) for d, dirs, files in os.walk(out) for f in dirs + files]
  assert left == [os.path.join(out, ".visage-predict")], left  # the staging folder's parent


def test_a_broken_video_is_reported_and_skipped(videos, ckpt_small, tmp_path):
  # fixed bytes: random ones are, once in a few thousand, a container FFmpeg opens (then the
  # message is "no video stream", which test_data checks with an audio file)
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(b"this is not a video\n" * 250)
  out = str(tmp_path / "out")
  res = _predict(ckpt_small, out, os.path.join(videos, "clip1.mp4"), str(broken))
  assert res.returncode == 1
  (line,) = [x for x in res.stderr.splitlines() if x.startswith("failed: ")]
  assert line.count(str(broken)) == 1, line  # the path named once
  assert line.endswith("cannot open video: Invalid data found when processing input"), line
  assert "video_reader.cc" not in res.stderr  # decord's own log line, printed before it raises
  assert os.path.isdir(os.path.join(out, "clip1")) and not os.path.exists(
    os.path.join(out, "broken")
  )


def test_writers_that_fail_to_start_leave_no_staging_folder(videos, tmp_path, monkeypatch):
  """An encoder that cannot start (here: made to raise) is an error like any other mid-video:
  the video's staging folder goes too."""
  from visage_jax.inference import predict, writers

  def no_encoder(*args, **kwargs):
    raise OSError("no H.264 encoder")

  monkeypatch.setattr(writers, "VideoOutputs", no_encoder)

  class NoModel:
    expert_names = ("expert1", "expert2")

  settings = {"source_fps": None, "save_experts": True, "map_size": "source", "stride": 0}
  settings["outputs"] = list(predict.OUTPUTS)
  with pytest.raises(OSError, match="no H.264 encoder"):
    predict.write_video_outputs(
      NoModel(), os.path.join(videos, "clip0.mp4"), str(tmp_path), settings=settings
    )
  assert os.listdir(tmp_path) == [".visage-predict"]
  assert os.listdir(tmp_path / ".visage-predict") == []


@pytest.fixture(scope="module")
def predictor(ckpt_small):
  from visage_jax.inference import Predictor

  return Predictor.load(ckpt_small)


@pytest.fixture(scope="module")
def clip0_maps(predictor, videos):
  """`Predictor.predict_video` of clip0."""
  return predictor.predict_video(os.path.join(videos, "clip0.mp4"))


def test_predict_video_arrays(predictor, clip0_maps, videos):
  p, out = predictor, clip0_maps
  assert out["fused"].shape == (FRAMES, 112, 112) and out["source_size"] == SIZE
  assert set(out) >= {"expert1", "expert2", "fused"}
  assert 0 <= out["fused"].min() and out["fused"].max() <= 1
  # frame 6 is the second frame of the first window (offset 0: frames 0, 6, 12, 18, 24 then padding)
  from visage_jax.inference import stream

  source = stream.VideoSource(open_video(os.path.join(videos, "clip0.mp4")), stride=6)
  first = next(stream.window_batches(source, window=8, size=112, batch_size=1))
  assert list(first.indices[0][first.mask[0]]) == [0, 6, 12, 18, 24]
  np.testing.assert_allclose(out["fused"][6], p.predict_clip(first.clip)["fused"][0, 1], atol=1e-6)
  streamed = list(p.stream_video(os.path.join(videos, "clip0.mp4")))
  assert [f.index for f in streamed] == list(range(FRAMES))
  np.testing.assert_array_equal(np.stack([f.maps["fused"] for f in streamed]), out["fused"])
  with pytest.raises(ValueError, match=r"clip has shape \(1, 8, 112, 112\); this model takes"):
    p.predict_clip(first.clip[..., 0])
  pixels = np.zeros(first.clip.shape, np.uint8)  # frames not normalised: a mistake, not a clip
  with pytest.raises(ValueError, match="clip is uint8: predict_clip takes CLIP-normalised float"):
    p.predict_clip(pixels)


def test_save_experts_writes_each_experts_maps(ckpt_small, videos, clip0_maps, tmp_path):
  """--save_experts: OUT/experts/<expert>/<video>/ beside the fused maps, each the 8-bit form of
  `Predictor.predict_video`'s map of that name (at model size here, no resize between)."""
  from PIL import Image

  from visage_jax.metrics.maps import map_to_uint8

  clip = os.path.join(videos, "clip0.mp4")
  res = _predict(ckpt_small, str(tmp_path), clip, "--save_experts", "--map_size=model")
  assert res.returncode == 0, res.stderr[-3000:]
  want = clip0_maps
  folders = {"fused": tmp_path / "clip0"}
  folders.update({e: tmp_path / "experts" / e / "clip0" for e in ("expert1", "expert2")})
  for name, folder in folders.items():
    assert sorted(os.listdir(folder)) == [f"eyeMap_{k:05d}.png" for k in range(1, FRAMES + 1)]
    for k in (0, FRAMES - 1):
      png = np.asarray(Image.open(folder / f"eyeMap_{k + 1:05d}.png"))
      np.testing.assert_array_equal(png, map_to_uint8(want[name][k]), err_msg=f"{name} {k}")
  assert not np.array_equal(want["expert1"], want["expert2"])
  assert sorted(os.listdir(tmp_path / "experts")) == ["expert1", "expert2"]


def test_pngs_equal_the_pinned_maps_of_the_previous_video_path(ckpt_plain, tmp_path):
  """tests/data/pinned_maps.npz: maps the whole-video path (before the stream, d9fe953) wrote for
  tests/data/pinned_clip.mp4 (25 frames, 25 fps: stride 5) with this checkpoint. Re-pinned when
  the model's float32 numbers moved (the CPU attention and decoder heads): that path run with
  today's `visage_jax/models` and `configs`; 2 of 5184 pixels moved by 1 (the same 2 this path
  moved). The path that wrote the first pins reproduced them exactly."""
  from PIL import Image

  clip = os.path.join(REPO, "tests", "data", "pinned_clip.mp4")
  pinned = np.load(os.path.join(REPO, "tests", "data", "pinned_maps.npz"))
  res = _predict(ckpt_plain, str(tmp_path), clip)
  assert res.returncode == 0, res.stderr[-3000:]
  for i, expected in zip(pinned["frames"], pinned["maps"]):
    png = np.asarray(Image.open(tmp_path / "pinned_clip" / f"eyeMap_{i + 1:05d}.png"))
    np.testing.assert_array_equal(png, expected)


@pytest.mark.parametrize("devices,processes", [(4, 1), (2, 2)])
def test_predict_on_devices_and_processes_equals_one(
  reference, videos, ckpt_small, tmp_path, devices, processes
):
  """One window per device per step: the same per-device program as the reference. Two videos:
  with two processes, one each."""
  out = str(tmp_path / "out")
  args = [f"--checkpoint={ckpt_small}", f"--output={out}"]
  args += [f"--input={os.path.join(videos, f'clip{i}.mp4')}" for i in (0, 1)]
  for res in run_cli("visage_jax.cli.predict", *args, devices=devices, processes=processes):
    assert res.returncode == 0, res.stderr[-3000:]
  ours = _tree(out)
  theirs = {k: v for k, v in _tree(reference).items() if "clip2" not in k}
  assert sorted(ours) == sorted(theirs) and len(ours) == 2 * FRAMES
  for name in theirs:  # PNG bytes may differ with the encoder; the pixels may not
    np.testing.assert_array_equal(_pixels(ours[name]), _pixels(theirs[name]))


def _pixels(png_bytes):
  import io

  from PIL import Image

  return np.asarray(Image.open(io.BytesIO(png_bytes)))


def test_other_settings_are_refused_then_recomputed_and_checked(
  reference, videos, ckpt_small, tmp_path
):
  import shutil

  out = str(tmp_path / "out")
  shutil.copytree(reference, out)
  res = _predict(ckpt_small, out, videos, "--map_size=model")
  assert res.returncode == 2
  assert len(res.stderr.strip().splitlines()) == 1
  assert "clip0 (map_size 'source' → 'model')" in res.stderr and "--overwrite" in res.stderr
  res = _predict(ckpt_small, out, videos, "--dtype=bfloat16")
  assert res.returncode == 2 and "clip0 (dtype None → 'bfloat16')" in res.stderr
  # recompute one video (the refusal above needs no model; this run does), in bfloat16 over the
  # checkpoint's float32 weights
  clip0 = os.path.join(videos, "clip0.mp4")
  res = _predict(ckpt_small, out, clip0, "--map_size=model", "--dtype=bfloat16", "--overwrite")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "recomputing clip0" in res.stderr
  from PIL import Image

  assert Image.open(os.path.join(out, "clip0", "eyeMap_00001.png")).size == (112, 112)
  env = dict(os.environ, PYTHONPATH=REPO)
  check = subprocess.run(
    [sys.executable, "-m", "visage_jax.cli.check_submission", f"--predictions={out}",
     f"--videos={videos}"],
    capture_output=True, text=True, env=env,
  )  # fmt: skip
  assert check.returncode == 1
  assert f"clip0: frame 1 ({out}/clip0/eyeMap_00001.png) is 112×112, the video is 128×72" in (
    check.stdout
  )


def test_a_checkpoint_written_again_in_place_is_another_checkpoint(tmp_path):
  """Its path is the same, so the time its config.json was written tells it apart: a video made
  before it was retrained or converted anew is not taken as made by it. A record written before
  the time was recorded says so (one without the dtype is the default's: what was run then)."""
  from visage_jax.runtime.rerun import model_settings, settings_mismatch

  config = tmp_path / "ckpt" / "config.json"
  config.parent.mkdir()
  config.write_text("{}")
  os.utime(config, ns=(1_800_000_000_123_456_789,) * 2)
  before = model_settings(str(config.parent))
  assert before["checkpoint_written"] == "2027-01-15T08:00:00.123456+00:00"
  assert settings_mismatch(before, model_settings(str(config.parent))) is None
  os.utime(config, ns=(1_800_000_000_123_457_789,) * 2)
  why = settings_mismatch(before, model_settings(str(config.parent)))
  assert why == "checkpoint_written '2027-01-15T08:00:00.123456+00:00' → " + (
    "'2027-01-15T08:00:00.123457+00:00'"
  )
  older = {k: v for k, v in before.items() if k not in ("checkpoint_written", "dtype")}
  assert settings_mismatch(older, before) == "checkpoint_written not recorded (an older record)"


@pytest.mark.parametrize("output,why", [("file", "is an existing file"), ("/proc/1/x", "cannot")])
def test_bad_output_paths_are_one_line(videos, ckpt_small, tmp_path, output, why):
  if output == "file":
    output = str(tmp_path / "file")
    open(output, "w").close()
  res = _predict(ckpt_small, output, videos)
  assert res.returncode == 2 and why in res.stderr
  assert len(res.stderr.strip().splitlines()) == 1


def test_mistakes_are_told_before_jax_is_imported(videos, tmp_path):
  from conftest import refused_without_jax

  module, out = "visage_jax.cli.predict", f"--output={tmp_path / 'out'}"
  stderr, imported_jax = refused_without_jax(
    module, f"--checkpoint={videos}", f"--input={videos}", out
  )
  assert "not a visage-jax checkpoint (no config.json)" in stderr and not imported_jax
  stderr, imported_jax = refused_without_jax(module, f"--checkpoint={videos}", "--input=none", out)
  assert "--input=none: no such file or folder" in stderr and not imported_jax


def test_a_refused_run_leaves_no_output_folder(videos, tmp_path):
  output = tmp_path / "new" / "out"
  res = _predict(str(tmp_path / "no-checkpoint"), str(output), videos)
  assert res.returncode == 2 and "no-checkpoint: no such checkpoint folder" in res.stderr
  assert len(res.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "new")
  res = _predict(videos, str(output), videos)  # a folder, but not a checkpoint
  assert res.returncode == 2 and "not a visage-jax checkpoint (no config.json)" in res.stderr
  assert not os.path.exists(tmp_path / "new")
  (tmp_path / "by_topic" / "sports").mkdir(parents=True)  # videos one level down: not found
  res = _predict(videos, str(output), str(tmp_path / "by_topic"))
  assert res.returncode == 2 and res.stderr.splitlines() == [
    f"visage-predict: not searched: {tmp_path}/by_topic/sports (give it as an --input)",
    f"visage-predict: error: no videos in {tmp_path}/by_topic",
  ]


def _digest(root) -> dict:
  """Every file under `root` (or `root` itself), by relative path: its bytes."""
  if os.path.isfile(root):
    return {".": open(root, "rb").read()}
  return {
    os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
    for d, _, files in os.walk(root)
    for f in files
  }


@pytest.mark.parametrize("where", ["holds the file", "is the folder", "inside the folder"])
def test_an_output_that_overlaps_an_input_is_refused_and_nothing_changes(
  ckpt_small, tmp_path, where
):
  """`--input=DIR/clip.mp4 --output=DIR` once wrote the maps video over clip.mp4 and exited 0."""
  folder = tmp_path / "mine"
  folder.mkdir()
  frames, _, _ = make_video(7, 6, SIZE)
  write_mp4(str(folder / "clip.mp4"), frames, 30)
  before = _digest(str(folder))
  given, output = {
    "holds the file": (folder / "clip.mp4", folder),
    "is the folder": (folder, folder),
    "inside the folder": (folder, folder / "maps"),
  }[where]
  res = _predict(ckpt_small, str(output), str(given))
  assert res.returncode == 2, res.stderr[-2000:]
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"visage-predict: error: --output={output} ")
  assert f"--input={given}" in lines[0] and "apart from the inputs" in lines[0]
  assert _digest(str(folder)) == before


@pytest.mark.parametrize("taken", ["clip0.mp4", "clip0", "overlays/clip0.mp4"])
def test_a_file_we_did_not_write_at_an_output_name_is_never_replaced(
  videos, ckpt_small, tmp_path, taken
):
  output = tmp_path / "out"
  path = output / taken
  path.parent.mkdir(parents=True)
  if taken == "clip0":
    path.mkdir()
    (path / "notes.txt").write_text("mine")
  else:
    path.write_bytes(b"the user's own file")
  before = _digest(str(output))
  for extra in ((), ("--overwrite",)):
    res = _predict(ckpt_small, str(output), os.path.join(videos, "clip0.mp4"), *extra)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
      f"visage-predict: error: {path} exists and was not written by visage-predict (an output "
      f"name of {videos}/clip0.mp4): move it or choose another --output"
    ]
    assert _digest(str(output)) == before


def test_an_interrupted_move_into_place_is_finished_by_a_rerun(
  reference, videos, ckpt_small, tmp_path
):
  """The record is moved into place first: a run killed after it, with the maps video moved and
  the maps folder not, leaves outputs that a rerun knows as its own and replaces."""
  from visage_jax.inference.predict import settings_path

  output = tmp_path / "out"
  os.makedirs(output / ".visage-predict")
  shutil.copy(settings_path(reference, "clip1"), settings_path(str(output), "clip1"))
  (output / "clip1.mp4").write_bytes(b"half of an earlier run")
  res = _predict(ckpt_small, str(output), os.path.join(videos, "clip1.mp4"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert open_video(str(output / "clip1.mp4")).num_frames == FRAMES
  ref = {k: v for k, v in _tree(reference).items() if k.startswith("clip1/")}
  assert len(ref) == FRAMES and _tree(str(output)) == ref


def test_a_failure_of_ours_in_one_video_does_not_stop_the_others(monkeypatch, capsys):
  """Before issue 33 a rotated video's ValueError (in the overlay) ended the whole run: every
  later video went unpredicted. Now it is that video's failure, with its traceback, and the
  others are predicted."""
  import visage_jax.inference.predict
  from visage_jax.cli.predict import predict_each
  from visage_jax.data.video import VideoError

  def write(predictor, path, output, **kwargs):
    if path == "b.mp4":
      raise ValueError("operands could not be broadcast together")
    if path == "c.mp4":
      raise VideoError("c.mp4: cannot decode frame 3")
    written.append(path)

  written = []
  monkeypatch.setattr(visage_jax.inference.predict, "write_video_outputs", write)
  done, failed = predict_each(None, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], "out", {}, 1)
  assert (done, written) == (2, ["a.mp4", "d.mp4"])
  assert failed == [
    "b.mp4: ValueError: operands could not be broadcast together (a bug of visage-predict: "
    "please report it)",
    "c.mp4: cannot decode frame 3",
  ]
  stderr = capsys.readouterr().err
  assert "Traceback" in stderr and stderr.count("Traceback") == 1


def _decoded(path):
  video = open_video(path)
  return video.frames(np.arange(video.num_frames))


def test_outputs_choose_what_is_written_recorded_and_replaced(
  reference, videos, ckpt_small, tmp_path
):
  """--outputs=video writes the maps mp4 alone (the reference's frames), records it, and a rerun
  skips it; other outputs need --overwrite, which writes them and removes the mp4 it no longer
  writes."""
  import json

  out = str(tmp_path / "out")
  clip0 = os.path.join(videos, "clip0.mp4")
  res = _predict(ckpt_small, out, clip0, "--outputs=video")
  assert res.returncode == 0, res.stderr[-3000:]
  assert sorted(os.listdir(out)) == [".visage-predict", "clip0.mp4"]
  np.testing.assert_array_equal(
    _decoded(os.path.join(out, "clip0.mp4")), _decoded(os.path.join(reference, "clip0.mp4"))
  )
  with open(os.path.join(out, ".visage-predict", "clip0.json")) as f:
    assert json.load(f)["outputs"] == ["video"]
  res = _predict(ckpt_small, out, clip0, "--outputs=video")
  assert res.returncode == 0 and "0 predicted, 1 already complete" in res.stdout
  res = _predict(ckpt_small, out, clip0, "--outputs=overlay,pngs")
  assert res.returncode == 2 and "outputs ['video'] → ['pngs', 'overlay']" in res.stderr
  res = _predict(ckpt_small, out, clip0, "--outputs=overlay,pngs", "--overwrite")
  assert res.returncode == 0, res.stderr[-3000:]
  assert sorted(os.listdir(out)) == [".visage-predict", "clip0", "overlays"]
  assert _tree(os.path.join(out, "clip0")) == _tree(os.path.join(reference, "clip0"))
  np.testing.assert_array_equal(
    _decoded(os.path.join(out, "overlays", "clip0.mp4")),
    _decoded(os.path.join(reference, "overlays", "clip0.mp4")),
  )
