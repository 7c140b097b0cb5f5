"""visage-eval over a small challenge-layout dataset, and visage-check-submission on its output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli
from test_metrics import ref_ntire

from visage_jax.data.challenge import ChallengeLayout, load_fixations
from visage_jax.data.synth import write_dataset
from visage_jax.data.video import open_video, to_gray

# one worker runs the whole module: its module fixtures are computed once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("eval")]

FRAMES = 26  # not a multiple of 6 · 8


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=900
  )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("data") / "synth")
  write_dataset(root, videos=4, frames=FRAMES, size=(72, 128), seed=1)
  return root


@pytest.fixture(scope="module")
def evaluated(dataset, ckpt_small, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("eval") / "out")
  res = _run(
    "visage_jax.cli.evaluate",
    f"--checkpoint={ckpt_small}",
    f"--data={dataset}",
    "--split=public_test",
    f"--output={out}",
    "--save_maps",
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert "fused" in res.stdout and "ntire2026" in res.stdout
  return out


def test_eval_writes_metrics_and_submission(evaluated, dataset):
  report = json.load(open(os.path.join(evaluated, "metrics.json")))
  names = [e.name for e in ChallengeLayout(dataset).entries("public_test")]
  assert sorted(report["per_video"]) == sorted(names)
  for source in ("expert1", "expert2", "fused"):
    for variant in ("ntire2026", "mit"):
      node = report["overall"][source][variant]
      for metric in ("cc", "sim", "nss", "auc_judd", "kld"):
        assert node[metric]["challenge"] is not None
        assert node[metric]["frames"] == FRAMES * len(names)
  for name in names:
    folder = os.path.join(evaluated, "predictions", name)
    files = sorted(os.listdir(folder))
    assert files == [f"eyeMap_{i:05d}.png" for i in range(1, FRAMES + 1)]
    assert open_video(os.path.join(evaluated, "predictions", name + ".mp4")).num_frames == FRAMES


def test_eval_numbers_are_the_challenge_scorers_on_the_written_maps(evaluated, dataset):
  """Score the written PNGs with the scorer's own steps (float64): the same per-video numbers."""
  from PIL import Image

  report = json.load(open(os.path.join(evaluated, "metrics.json")))
  eps = np.finfo(np.float32).eps
  for entry in ChallengeLayout(dataset).entries("public_test"):
    video = open_video(entry.video)
    gt = to_gray(open_video(entry.saliency).frames(range(FRAMES))).astype(np.float64)
    points = load_fixations(entry.fixations, FRAMES, video.height, video.width)
    scores = {k: [] for k in ("cc", "sim", "nss", "auc_judd")}
    for i in range(FRAMES):
      png = np.asarray(
        Image.open(os.path.join(evaluated, "predictions", entry.name, f"eyeMap_{i + 1:05d}.png")),
        np.float64,
      )
      s = (png - png.min()) / (png.max() - png.min() + eps)
      g = (gt[i] - gt[i].min()) / (gt[i].max() - gt[i].min() + eps)
      r = ref_ntire(s, g, points[i].astype(np.int64))
      for k in scores:
        scores[k].append(r[k])
    ours = report["per_video"][entry.name]["fused"]["ntire2026"]
    for k, v in scores.items():
      assert abs(ours[k] - np.mean(v)) <= 1e-5 * (1 + abs(np.mean(v))), (k, ours[k], np.mean(v))


def test_check_submission_accepts_and_rejects(evaluated, dataset, tmp_path):
  preds = os.path.join(evaluated, "predictions")
  ok = _run("visage_jax.cli.check_submission", f"--predictions={preds}", f"--videos={dataset}")
  assert ok.returncode == 0, ok.stdout + ok.stderr
  assert "1/1 videos OK" in ok.stdout

  broken = str(tmp_path / "broken")
  shutil.copytree(preds, broken)
  name = sorted(d for d in os.listdir(broken) if os.path.isdir(os.path.join(broken, d)))[0]
  os.remove(os.path.join(broken, name, "eyeMap_00017.png"))
  bad = _run("visage_jax.cli.check_submission", f"--predictions={broken}", f"--videos={dataset}")
  assert bad.returncode == 1
  assert f"{name}: missing frame 17 (eyeMap_00017.png)" in bad.stdout
  for path, why in (  # usage mistakes (issue 33): one line on stderr, exit 2, not a "problem"
    (broken + "x", "does not exist"),
    (os.path.join(dataset, "TrainTestSplit.json"), "is a file, not a folder"),
  ):
    res = _run("visage_jax.cli.check_submission", f"--predictions={path}", f"--videos={dataset}")
    line = f"visage-check-submission: error: --predictions={path} {why}\n"
    assert (res.returncode, res.stderr, res.stdout) == (2, line, ""), res.stderr


def test_check_submission_takes_the_videos_visage_predict_finds(tmp_path):
  """A folder of videos: every file visage-predict would predict (not only .mp4), by its name."""
  import av

  from visage_jax.cli.check_submission import expected_videos
  from visage_jax.data.encode import write_mp4

  write_mp4(str(tmp_path / "a.mp4"), np.zeros((2, 16, 16), np.uint8), 25.0)
  with av.open(str(tmp_path / "b.avi"), "w") as container:  # MJPEG in AVI, as cameras write
    stream = container.add_stream("mjpeg", rate=25)
    stream.width = stream.height = 16
    stream.pix_fmt = "yuvj420p"
    container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8))))
    container.mux(stream.encode())
  (tmp_path / "notes.txt").write_text("not a video")
  assert expected_videos(str(tmp_path), "public_test") == {
    "a": str(tmp_path / "a.mp4"),
    "b": str(tmp_path / "b.avi"),
  }


def test_eval_names_a_missing_video(dataset, ckpt_small, tmp_path):
  broken = str(tmp_path / "ds")
  shutil.copytree(dataset, broken)
  entry = ChallengeLayout(broken).entries("public_test")[0]
  os.remove(entry.video)
  res = _run(
    "visage_jax.cli.evaluate",
    f"--checkpoint={ckpt_small}",
    f"--data={broken}",
    f"--output={tmp_path / 'out'}",
  )
  assert res.returncode == 2
  assert entry.video in res.stderr and "missing" in res.stderr
  assert not os.path.exists(tmp_path / "out")  # a refused run leaves no folder behind


def _pngs(root):
  from PIL import Image

  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      if f.endswith(".png"):
        out[os.path.relpath(os.path.join(d, f), root)] = np.asarray(Image.open(os.path.join(d, f)))
  return out


def _numbers(node, path=()):
  """Every number of a metrics.json report, by its path."""
  if isinstance(node, dict):
    for k, v in node.items():
      yield from _numbers(v, (*path, k))
  elif isinstance(node, (int, float)):
    yield path, float(node)


@pytest.mark.parametrize("devices,processes", [(4, 1), (2, 2)])
def test_eval_on_devices_and_processes_equals_one_device(
  evaluated, dataset, ckpt_small, tmp_path, devices, processes
):
  out = str(tmp_path / "out")
  args = [f"--checkpoint={ckpt_small}", f"--data={dataset}", f"--output={out}", "--save_maps"]
  runs = run_cli("visage_jax.cli.evaluate", *args, devices=devices, processes=processes)
  for res in runs:
    assert res.returncode == 0, res.stderr[-3000:]
  assert "fused" in runs[0].stdout
  scores = lambda d: {
    k: json.load(open(os.path.join(d, "metrics.json")))[k] for k in ("overall", "per_video")
  }  # noqa: E731, E501
  one, many = dict(_numbers(scores(evaluated))), dict(_numbers(scores(out)))
  assert sorted(one) == sorted(many)
  for path, value in many.items():
    assert abs(value - one[path]) <= 1e-6, (path, value, one[path])
  single, sharded = _pngs(os.path.join(evaluated, "predictions")), _pngs(out)
  assert sorted(single) == sorted(os.path.relpath(p, "predictions") for p in sharded)
  for name, pixels in single.items():
    np.testing.assert_array_equal(sharded[os.path.join("predictions", name)], pixels)
  records = sorted(os.listdir(os.path.join(out, ".visage-eval")))  # how process 0 merged them
  assert records == sorted(
    v + ".npz" for v in json.load(open(os.path.join(out, "metrics.json")))["per_video"]
  )


def test_processes_that_do_not_share_the_output_are_told_so(dataset, ckpt_small, tmp_path):
  """Two processes whose --output is not the same folder (as on two hosts' own disks): process 0
  could not merge the other's numbers. One line on each, exit 2, before any work."""
  args = [f"--checkpoint={ckpt_small}", f"--data={dataset}", f"--output={tmp_path / 'a'}"]
  own = {1: [f"--output={tmp_path / 'b'}"]}
  runs = run_cli("visage_jax.cli.evaluate", *args, processes=2, own_args=own)
  for res, out in zip(runs, ("a", "b")):
    assert res.returncode == 2, res.stderr[-3000:]
    assert (
      f"visage-eval: error: --output={tmp_path / out}: process 0 does not see what process 1 "
      "writes there; every process needs the same folder (on a filesystem they share)"
    ) in res.stderr.splitlines()
    assert os.listdir(tmp_path / out / ".visage-eval") == []


def test_eval_resumes_and_refuses_other_settings(dataset, ckpt_small, tmp_path):
  """A video that cannot be read is named and the others are scored and recorded (exit 1, no
  metrics.json); the rerun scores only what is missing, leaving the others' files alone, and
  writes the metrics.json of an uninterrupted run; a rerun with another setting is refused in one
  line, then with --overwrite scored again."""
  data, out = str(tmp_path / "data"), str(tmp_path / "out")
  shutil.copytree(dataset, data)
  args = [f"--checkpoint={ckpt_small}", f"--data={data}", f"--output={out}", "--save_maps"]
  args += ["--split=train", "--max_videos=2", "--stride=4"]  # 4 windows a video (6 at 30 fps)
  metrics_json = os.path.join(out, "metrics.json")
  first = _run("visage_jax.cli.evaluate", *args)
  assert first.returncode == 0, first.stderr[-3000:]
  report = json.load(open(metrics_json))
  names = [e.name for e in ChallengeLayout(data).entries("train")[:2]]
  records = os.path.join(out, ".visage-eval")
  assert sorted(os.listdir(records)) == sorted(n + ".npz" for n in names)
  kept = [os.path.join(out, "predictions", names[0], "eyeMap_00001.png")]
  kept.append(os.path.join(records, names[0] + ".npz"))
  stamps = [os.stat(p).st_mtime_ns for p in kept]
  # the second video scored again, now cut short
  os.remove(os.path.join(records, names[1] + ".npz"))
  shutil.rmtree(os.path.join(out, "predictions", names[1]))
  video = ChallengeLayout(data).entries("train")[1].video
  whole = open(video, "rb").read()
  open(video, "wb").write(whole[: len(whole) // 2])

  failed = _run("visage_jax.cli.evaluate", *args)
  assert failed.returncode == 1, failed.stderr[-3000:]
  last = failed.stderr.strip().splitlines()[-1]
  assert last.startswith(f"visage-eval: error: 1 of 2 videos could not be scored: {video}: ")
  assert last.endswith(f"recorded in {records}, and a rerun scores only what is missing; "
                       "metrics.json not written")  # fmt: skip
  assert not os.path.exists(metrics_json) and not os.path.exists(
    os.path.join(out, "predictions", names[1])
  )
  assert sorted(os.listdir(records)) == sorted([names[0] + ".npz", names[1] + ".failed"])

  open(video, "wb").write(whole)
  again = _run("visage_jax.cli.evaluate", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"visage-eval: 1 of 2 videos already scored ({records})" in again.stderr
  assert [os.stat(p).st_mtime_ns for p in kept] == stamps
  assert len(os.listdir(os.path.join(out, "predictions", names[1]))) == FRAMES
  assert sorted(os.listdir(records)) == sorted(n + ".npz" for n in names)
  resumed = json.load(open(metrics_json))
  assert resumed["per_video"] == report["per_video"] and resumed["overall"] == report["overall"]

  refused = _run("visage_jax.cli.evaluate", *args, "--stride=1")
  assert refused.returncode == 2
  assert refused.stderr.strip() == (
    f"visage-eval: error: {out} holds videos made with other settings: {names[0]} (stride 4 → 1) "
    "and 1 more; pass --overwrite to recompute them"
  )
  assert json.load(open(metrics_json)) == resumed  # refused before any work

  redo = _run("visage_jax.cli.evaluate", *args, "--stride=1", "--overwrite")
  assert redo.returncode == 0, redo.stderr[-3000:]
  assert f"visage-eval: scoring again {names[1]} (stride 4 → 1)" in redo.stderr
  from visage_jax.evaluation.records import read_record

  assert all(read_record(os.path.join(records, n + ".npz"))[0]["stride"] == 1 for n in names)
  cc = lambda r: r["overall"]["fused"]["ntire2026"]["cc"]["challenge"]  # noqa: E731
  assert cc(json.load(open(metrics_json))) != cc(report)
