"""DHF1K, Hollywood-2 and UCF-Sports as distributed: visage-synth writes them, the data layer reads
them (videos as files or as folders of frames), visage-prepare and visage-eval run on them, and
visage-eval follows the DHF1K protocol (mit metrics, s-AUC with other videos' fixations)."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_metrics_mit import m_cc, m_nss, m_similarity

from visage_jax import metrics
from visage_jax.data import layouts
from visage_jax.data.encode import write_png
from visage_jax.data.prepare import data_source, prepare
from visage_jax.data.synth import make_video
from visage_jax.data.video import FrameFolderReader, VideoError, open_video

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("layouts")]

FRAMES, SIZE, FPS = 14, (36, 64), 30.0


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """Each layout, written by visage-synth."""
  root = tmp_path_factory.mktemp("layouts")
  out = {}
  for layout, videos, want in [
    ("dhf1k", 6, "4 train, 2 validation videos"),
    ("hollywood2", 3, "2 train, 1 test videos"),
    ("ucf_sports", 3, "2 train, 1 test videos"),
  ]:
    out[layout] = str(root / layout)
    res = run_cli(
      "visage_jax.cli.synth",
      f"--output={out[layout]}",
      f"--layout={layout}",
      f"--videos={videos}",
      f"--frames={FRAMES}",
      "--size=36x64",
      f"--fps={FPS}",
    )[0]
    assert res.returncode == 0 and want in res.stdout, res.stdout + res.stderr[-2000:]
  return out


@pytest.mark.parametrize("layout", ["dhf1k", "hollywood2", "ucf_sports"])
def test_layouts_read_back_what_synth_wrote(datasets, layout):
  dataset = layouts.open_layout(layout, datasets[layout])
  split = layouts.EVAL_SPLIT[layout]
  names = dataset.names("train") + dataset.names(split)
  assert len(names) == (6 if layout == "dhf1k" else 3)
  if layout == "dhf1k":
    assert dataset.names(split) == ["601", "602"]
  for i, name in enumerate(names):
    entry = dataset.entry(name, "train" if name in dataset.names("train") else split)
    video, sal, points = layouts.open_entry(entry, source_fps=FPS)
    frames, maps, fixations = make_video(i, FRAMES, SIZE)
    assert (video.num_frames, video.height, video.width, video.fps) == (FRAMES, *SIZE, FPS)
    if layout != "dhf1k":  # frames as PNGs: exact (DHF1K's AVI is lossy)
      np.testing.assert_array_equal(video.frames(range(FRAMES)), frames)
    np.testing.assert_array_equal(sal.frames(range(FRAMES))[..., 0], maps)
    for got, want in zip(points, fixations):  # binary fixation maps: each pixel once
      assert sorted(map(tuple, got.tolist())) == sorted(set(map(tuple, want)))


@pytest.mark.parametrize("layout", ["dhf1k", "hollywood2", "ucf_sports"])
def test_prepare_each_layout(datasets, layout, tmp_path):
  out = str(tmp_path / "prepared")
  report = prepare(layout, datasets[layout], out, size=32, source_fps=FPS)
  split = layouts.EVAL_SPLIT[layout]
  assert report["splits"] == (
    {"train": 4, split: 2} if layout == "dhf1k" else {"train": 2, split: 1}
  )
  ds, info = data_source(out, split)
  assert info.metadata["layout"] == layout
  assert ds[0]["frames"].shape == (3, 32, 32, 3)  # frames 0, 6, 12 of 14 at 30 fps → 5 fps


def test_frame_folders(tmp_path):
  frames, _, _ = make_video(3, 12, SIZE)
  folder = tmp_path / "clip"
  folder.mkdir()
  for i, f in enumerate(frames):  # frame_2 must come before frame_10
    write_png(str(folder / f"frame_{i + 1}.png"), f)
  video = open_video(str(folder), fps=25.0)
  assert isinstance(video, FrameFolderReader) and video.fps == 25.0
  np.testing.assert_array_equal(video.frames([1, 9, 10]), frames[[1, 9, 10]])
  with pytest.raises(VideoError, match="no frame rate"):
    open_video(str(folder))
  write_png(str(folder / "frame_0002.png"), frames[0])
  with pytest.raises(VideoError, match="both hold frame number 2"):
    open_video(str(folder), fps=25.0)
  os.remove(folder / "frame_0002.png")
  write_png(str(folder / "frame_13.png"), frames[0][:10])
  with pytest.raises(
    VideoError, match=r"frame_13.png: 64×10 \(width × height\), the first frame is 64×36"
  ):
    open_video(str(folder), fps=25.0).frames([12])
  deep = (frames[0, ..., 0].astype(np.uint16) * 257).astype(np.uint16)  # a 16-bit grey frame
  Image.fromarray(deep).save(folder / "frame_13.png")
  assert Image.open(folder / "frame_13.png").mode == "I;16"
  with pytest.raises(
    VideoError, match="frame_13.png: a I;16 image; frames and maps are read as 8-bit"
  ):
    open_video(str(folder), fps=25.0).frames([12])


def test_shuffled_negatives_come_from_other_videos_reproducibly():
  """Each video's fixations lie in its own column, so a negative's column names its video."""
  points = {}
  for v in range(5):
    frames = [np.array([[t, v], [t + 10, v]], np.int32) for t in range(8)]
    points[f"v{v}"] = (frames, (20, 5))
  pool = layouts.ShuffledNegatives(points, m=3, seed=7)
  neg = pool("v2", 4, (20, 5))
  assert 2 not in set(neg[:, 1].tolist())  # never the frame's own video
  assert 0 < len(neg) <= 3 * 2 and len(np.unique(neg, axis=0)) == len(neg)
  np.testing.assert_array_equal(neg, pool("v2", 4, (20, 5)))  # seeded by (seed, video, frame)
  draws = {pool("v2", t, (20, 5)).tobytes() for t in range(8)}
  assert len(draws) > 1
  scaled = pool("v2", 4, (40, 10))  # another frame size: positions scale with it
  np.testing.assert_array_equal(scaled, neg * 2)
  assert len(layouts.ShuffledNegatives({"v0": points["v0"]})("v0", 0, (20, 5))) == 0


def _read_png(path):
  return np.asarray(Image.open(path), np.float64)


def test_eval_dhf1k_protocol(datasets, ckpt_small, tmp_path):
  out = str(tmp_path / "eval")
  res = run_cli(
    "visage_jax.cli.evaluate",
    f"--checkpoint={ckpt_small}",
    f"--data={datasets['dhf1k']}",
    "--layout=dhf1k",
    f"--output={out}",
    "--save_maps",
    "--sauc_seed=3",
  )[0]
  assert res.returncode == 0, res.stderr[-3000:]
  header = [line.split() for line in res.stdout.splitlines() if line.startswith("map")][0]
  assert header == ["map", "AUC-J", "SIM", "s-AUC", "CC", "NSS"]
  report = json.load(open(os.path.join(out, "metrics.json")))
  assert report["protocol"]["M"] == 10 and report["protocol"]["seed"] == 3
  assert report["split"] == "validation" and sorted(report["per_video"]) == ["601", "602"]
  fused = report["overall"]["fused"]["mit"]
  for metric in ("auc_judd", "sim", "sauc", "sauc_splits", "cc", "nss"):
    assert fused[metric]["frames"] == 2 * FRAMES and fused[metric]["undefined_frames"] == 0
  # The written 8-bit maps scored again: CC, SIM and NSS by the MATLAB ports; s-AUC from numpy
  # level histograms, with the negatives and the draws the recorded protocol makes.
  dataset = layouts.open_layout("dhf1k", datasets["dhf1k"])
  entries = dataset.entries("validation")
  pool_points = {}
  for e in entries:
    video, _, points = layouts.open_entry(e)
    pool_points[e.name] = (points, (video.height, video.width))
  pool = layouts.ShuffledNegatives(pool_points, m=10, seed=3)
  for e in entries:
    _, sal, points = layouts.open_entry(e)
    want = {k: [] for k in ("cc", "sim", "nss", "sauc", "sauc_splits")}
    for i in range(FRAMES):
      pred = _read_png(os.path.join(out, "predictions", e.name, f"eyeMap_{i + 1:05d}.png"))
      gt = sal.frames([i])[0, ..., 0].astype(np.float64)
      fix = np.zeros(SIZE, np.int32)
      fix[points[i][:, 0], points[i][:, 1]] = 1
      neg = np.zeros(SIZE, np.int32)
      n = pool(e.name, i, SIZE)
      neg[n[:, 0], n[:, 1]] = 1
      want["cc"].append(m_cc(pred, gt))
      want["sim"].append(m_similarity(pred, gt))
      want["nss"].append(m_nss(pred, fix))
      levels = pred.astype(int)
      hist = np.stack([np.bincount(levels[m > 0], minlength=256) for m in (fix, neg)])
      lo, hi = levels.min(), levels.max()
      want["sauc"].append(metrics.sauc_levels(hist, lo, hi))
      rng = np.random.default_rng([3, zlib.crc32(e.name.encode()), i, 2])  # map 2: fused
      want["sauc_splits"].append(metrics.sauc_levels(hist, lo, hi, splits=100, rng=rng))
    ours = report["per_video"][e.name]["fused"]["mit"]
    for k, v in want.items():
      assert abs(ours[k] - np.mean(v)) <= 1e-5, (e.name, k, ours[k], np.mean(v))


@pytest.mark.parametrize("layout", ["hollywood2", "ucf_sports"])
def test_eval_clip_layouts(datasets, ckpt_small, tmp_path, layout):
  out = str(tmp_path / "eval")
  res = run_cli(
    "visage_jax.cli.evaluate",
    f"--checkpoint={ckpt_small}",
    f"--data={datasets[layout]}",
    f"--layout={layout}",
    f"--source_fps={FPS}",
    "--sauc_frames=2",
    f"--output={out}",
  )[0]
  assert res.returncode == 0, res.stderr[-3000:]
  # one test video: s-AUC has no other video to draw negatives from, which it says
  assert "s-AUC is undefined: split 'test' has one video" in res.stderr
  assert "AUC-J" in res.stdout
  result = json.load(open(os.path.join(out, "metrics.json")))
  assert result["split"] == "test" and list(result["per_video"]) == ["synth_002"]
  assert result["protocol"]["M"] == 2
  node = result["overall"]["fused"]["mit"]
  assert node["sauc"]["undefined_frames"] == FRAMES and node["cc"]["frames"] == FRAMES


def test_user_mistakes_are_one_line_before_jax_is_imported(datasets, ckpt_small, tmp_path):
  """visage-eval's checkpoint, dataset and protocol settings are checked before JAX is imported
  (0.15 s on the CI machine, 1.8–2.8 s before): exit 2, one line, no output folder."""
  from conftest import refused_without_jax

  out = f"--output={tmp_path / 'out'}"
  checkpoint = f"--checkpoint={ckpt_small}"  # a later --checkpoint replaces it (absl)
  not_a_checkpoint = tmp_path / "not_a_checkpoint"  # apart from --output, which it would hold
  not_a_checkpoint.mkdir()
  hollywood2, dhf1k = (f"--data={datasets[k]}" for k in ("hollywood2", "dhf1k"))
  cases = [
    ([hollywood2, "--layout=hollywood2"], "--source_fps"),
    ([hollywood2, "--layout=dhf1k"], "not a DHF1K-layout dataset"),
    ([dhf1k, "--layout=dhf1k", "--noquantize_uint8"], "scores 8-bit maps"),
    ([dhf1k, "--layout=dhf1k", "--split=nosuch"], "unknown DHF1K split 'nosuch'"),
    ([dhf1k, "--layout=dhf1k", f"--checkpoint={not_a_checkpoint}"], "no config.json"),
    ([dhf1k, "--layout=dhf1k", f"--checkpoint={tmp_path}"], "lies inside --checkpoint="),
  ]
  for args, message in cases:
    stderr, imported_jax = refused_without_jax("visage_jax.cli.evaluate", checkpoint, *args, out)
    assert message in stderr and stderr.strip().count("\n") == 0, (args, stderr)
    assert not imported_jax, args
    assert not os.path.exists(tmp_path / "out")


def test_frame_folder_predicts_like_the_mp4(ckpt_small, tmp_path):
  from visage_jax.data.encode import write_mp4
  from visage_jax.inference import Predictor

  frames, _, _ = make_video(5, 13, (48, 80))
  mp4 = str(tmp_path / "clip.mp4")
  write_mp4(mp4, frames, 25.0, crf=12)
  decoded = open_video(mp4).frames(range(13))
  folder = tmp_path / "clip" / "images"
  folder.mkdir(parents=True)
  for i, f in enumerate(decoded):
    write_png(str(folder / f"{i + 1:05d}.png"), f)
  predictor = Predictor.load(ckpt_small)
  from_mp4 = predictor.predict_video(mp4)
  from_folder = predictor.predict_video(str(folder), source_fps=25.0)
  for k in ("expert1", "expert2", "fused"):
    np.testing.assert_array_equal(from_folder[k], from_mp4[k])
  assert from_folder["fps"] == 25.0 and from_folder["source_size"] == (48, 80)


def test_predict_takes_frame_folders(datasets, ckpt_small, tmp_path):
  from visage_jax.inference.predict import find_videos, folders_not_searched, video_name

  images = os.path.join(datasets["hollywood2"], "testing", "synth_002", "images")
  assert find_videos([images]) == [images] and video_name(images) == "synth_002"
  testing = os.path.join(datasets["hollywood2"], "testing")  # a split of <clip>/images folders
  assert find_videos([testing]) == [images] and folders_not_searched([testing]) == []
  videos = os.path.join(datasets["dhf1k"], "video")
  assert [video_name(v) for v in find_videos([videos])] == [
    f"{k:03d}" for k in (1, 2, 3, 4, 601, 602)
  ]
  res = run_cli(
    "visage_jax.cli.predict",
    f"--checkpoint={ckpt_small}",
    f"--input={images}",
    f"--output={tmp_path / 'out'}",
  )[0]
  assert res.returncode == 2 and "--source_fps" in res.stderr
  assert res.stderr.strip().count("\n") == 0 and not os.path.exists(tmp_path / "out")
