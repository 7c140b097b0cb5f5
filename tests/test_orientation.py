"""Videos with a display matrix (phone videos: rotation tags, mirrors) and images with an EXIF
orientation are read as a player shows them, by every reader: the frames, the maps of
visage-predict and visage-eval and the examples of visage-prepare equal those of the same frames
physically turned, at the displayed size (issue 33, item 2)."""

from __future__ import annotations

import os
import shutil

import av
import numpy as np
import pytest

from visage_jax.data.synth import make_video
from visage_jax.data.video import open_video, sequential

pytestmark = pytest.mark.xdist_group("orientation")

# (degrees counterclockwise, mirrored left-right after it): PyAV's `set_display_rotation`, whose
# matrix players apply; 270 + vertical mirror is the same matrix as 90 + horizontal.
TAGS = [(90, False), (180, False), (270, False), (0, True), (90, True)]
FRAMES, SIZE = 13, (72, 128)


def displayed(stored: np.ndarray, degrees: int, mirror: bool) -> np.ndarray:
  """(N, H, W, 3) frames as a player shows them under the tag (the tag's documented meaning)."""
  out = np.rot90(stored, degrees // 90, axes=(1, 2))
  return np.ascontiguousarray(out[:, :, ::-1] if mirror else out)


def stored_for(shown: np.ndarray, degrees: int, mirror: bool) -> np.ndarray:
  """The frames to store under the tag so that a player shows `shown`."""
  out = shown[:, :, ::-1] if mirror else shown
  return np.ascontiguousarray(np.rot90(out, -(degrees // 90), axes=(1, 2)))


def write_lossless(path: str, frames: np.ndarray, fps: float = 25, tag=None) -> None:
  """Frames exactly (x264 lossless, 4:4:4; YUV↔RGB rounds each pixel alike), with the tag's
  display matrix if given."""
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt, stream.options = "yuv444p", {"qp": "0", "preset": "ultrafast"}
    if tag:
      stream.set_display_rotation(tag[0], hflip=tag[1])
    for f in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    container.mux(stream.encode())


def tagged_pair(folder, tag, frames=None) -> tuple[str, str]:
  """(a tagged video, the same frames physically turned as an untagged one)."""
  shown = make_video(7, FRAMES, SIZE)[0] if frames is None else frames
  plain, tagged = str(folder / "plain.mp4"), str(folder / f"tagged_{tag[0]}_{int(tag[1])}.mp4")
  write_lossless(plain, shown)
  write_lossless(tagged, stored_for(shown, *tag), tag=tag)
  return tagged, plain


def test_the_test_helpers_invert_each_other():
  frames = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
  for tag in TAGS:
    assert np.array_equal(displayed(stored_for(frames, *tag), *tag), frames), tag


@pytest.mark.parametrize("tag", TAGS, ids=lambda t: f"{t[0]}{'m' if t[1] else ''}")
def test_both_readers_give_the_displayed_frames(tmp_path, tag):
  tagged, plain = tagged_pair(tmp_path, tag)
  want = open_video(plain).frames(np.arange(FRAMES))
  video = open_video(tagged)
  assert (video.height, video.width) == SIZE
  assert np.array_equal(video.frames(np.arange(FRAMES)), want)  # decord: random access
  reader = sequential(video)  # PyAV: the streaming path of predict and eval
  try:
    got = np.stack(reader.read(0, 6) + reader.read(6, FRAMES))
  finally:
    reader.close()
  assert np.array_equal(got, want)


def test_a_rotation_off_the_quarter_turns_is_refused_by_name(tmp_path):
  from visage_jax.data.video import VideoError

  path = str(tmp_path / "tilted.mp4")
  frames = make_video(3, 2, (32, 32))[0]
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.height = stream.width = 32
    stream.pix_fmt = "yuv444p"
    stream.set_display_rotation(30)
    for f in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    container.mux(stream.encode())
  with pytest.raises(VideoError, match=r"tilted\.mp4: rotated by 30°"):
    open_video(path)


@pytest.mark.parametrize("orientation", [3, 6, 8, 2])
def test_frame_folders_follow_exif_orientation(tmp_path, orientation):
  from PIL import Image

  shown = make_video(5, 3, (24, 40))[0]
  # EXIF 3: turned 180°, 6: shown turned 90° clockwise, 8: 90° counterclockwise, 2: mirrored
  tag = {3: (180, False), 6: (270, False), 8: (90, False), 2: (0, True)}[orientation]
  stored = stored_for(shown, *tag)
  for folder, frames, exif in (("plain", shown, None), ("tagged", stored, orientation)):
    os.makedirs(tmp_path / folder)
    for i, f in enumerate(frames):
      image, info = Image.fromarray(f), Image.Exif()
      if exif:
        info[0x0112] = exif
      image.save(tmp_path / folder / f"{i:03d}.png", exif=info)
  tagged = open_video(str(tmp_path / "tagged"), fps=25)
  assert (tagged.height, tagged.width) == (24, 40)
  assert np.array_equal(tagged.frames([0, 1, 2]), shown)


@pytest.fixture(scope="module")
def predictor(ckpt_small):
  from visage_jax.inference import Predictor

  return Predictor.load(ckpt_small)


@pytest.mark.slow
@pytest.mark.parametrize("tag", [(90, False), (180, False), (90, True)], ids=["90", "180", "90m"])
def test_predict_writes_the_maps_of_the_turned_frames(predictor, tmp_path, tag):
  """At 90° visage-predict crashed in the overlay (the reader's size was decord's displayed one,
  the frames PyAV's stored ones); at 180° its maps came out upside down."""
  from PIL import Image

  from visage_jax.inference.predict import run_settings, write_video_outputs

  tagged, plain = tagged_pair(tmp_path, tag)
  trees = []
  for path in (tagged, plain):
    out = tmp_path / os.path.basename(path).replace(".mp4", "_out")
    os.makedirs(out)
    settings = run_settings("ckpt")
    assert write_video_outputs(predictor, path, str(out), settings=settings) == FRAMES
    name = os.path.basename(path)[:-4]
    pngs = sorted(os.listdir(out / name))
    trees.append([np.asarray(Image.open(out / name / p)) for p in pngs])
    for written in (out / f"{name}.mp4", out / "overlays" / f"{name}.mp4"):  # maps, overlay
      with av.open(str(written)) as video:
        first = next(video.decode(video=0))
        assert (first.height, first.width) == SIZE and first.rotation == 0, written
  assert len(trees[0]) == FRAMES and trees[0][0].shape == SIZE
  assert all(np.array_equal(a, b) for a, b in zip(*trees))


def _dataset_pair(tmp_path, tag):
  """Two copies of one challenge-layout dataset whose test video is stored tagged in the first
  and physically turned in the second (the same displayed frames, losslessly)."""
  from visage_jax.data.synth import write_dataset

  roots = [str(tmp_path / "tagged"), str(tmp_path / "plain")]
  write_dataset(roots[0], videos=2, frames=FRAMES, size=SIZE, seed=3)
  shutil.copytree(roots[0], roots[1])
  name = "synth_001.mp4"  # the test split's video
  shown = open_video(os.path.join(roots[0], "Videos", name)).frames(np.arange(FRAMES))
  write_lossless(os.path.join(roots[0], "Videos", name), stored_for(shown, *tag), 30, tag)
  write_lossless(os.path.join(roots[1], "Videos", name), shown, 30)
  return roots


@pytest.mark.slow
def test_eval_scores_the_maps_of_the_turned_frames(ckpt_small, tmp_path):
  import json

  from PIL import Image

  from visage_jax.evaluation.evaluate import evaluate_dataset

  results = []
  for root in _dataset_pair(tmp_path, (270, False)):
    out = root + "_eval"
    evaluate_dataset(ckpt_small, root, "public_test", out, save_maps=True)
    maps = os.path.join(out, "predictions", "synth_001")
    pngs = [np.asarray(Image.open(os.path.join(maps, p))) for p in sorted(os.listdir(maps))]
    results.append((json.load(open(os.path.join(out, "metrics.json")))["overall"], pngs))
  (tagged, tagged_maps), (plain, plain_maps) = results
  assert tagged == plain
  assert tagged_maps[0].shape == SIZE and len(tagged_maps) == FRAMES
  assert all(np.array_equal(a, b) for a, b in zip(tagged_maps, plain_maps))


@pytest.mark.slow
def test_prepare_reads_the_turned_frames(tmp_path):
  """visage-prepare's examples (frames, maps, fixations at the model's size) of the tagged video
  equal those of the turned one: it reads through the same readers."""
  from visage_jax.data import layouts
  from visage_jax.data.builders.common import SourceVideo, example
  from visage_jax.data.video import to_gray

  examples = []
  for root in _dataset_pair(tmp_path, (90, True)):
    entry = layouts.open_layout("ntire2026", root).entry("synth_001", "public_test")
    video, sal, points = layouts.open_entry(entry)
    source = SourceVideo("synth_001", video, lambda idx, sal=sal: to_gray(sal.frames(idx)), points)
    examples.append(example(source, size=56, stride=2, offset=0))
  tagged, plain = examples
  assert tagged.keys() == plain.keys()
  for key in tagged:
    assert np.array_equal(tagged[key], plain[key]), key


@pytest.mark.slow
def test_a_variable_rate_video_keeps_its_timestamps(predictor, tmp_path):
  """Issue 33, item 9: a variable-rate video's maps video and overlay show each frame when the
  source shows it (they were constant-rate, drifting up to 0.39 s on a phone video); a
  constant-rate one is still written at its rate."""
  import fractions

  from visage_jax.data.video import variable_times
  from visage_jax.inference.predict import run_settings, write_video_outputs

  shown = make_video(9, FRAMES, SIZE)[0]
  gaps = [1 / 30 if i % 3 else 1 / 8 for i in range(FRAMES - 1)]  # bursts and pauses
  times = np.concatenate([[0.0], np.cumsum(gaps)])
  path = str(tmp_path / "vfr.mp4")
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=30)
    stream.height, stream.width = SIZE
    stream.pix_fmt = "yuv420p"
    stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 90000)
    for t, f in zip(times, shown):
      frame = av.VideoFrame.from_ndarray(f, format="rgb24")
      frame.pts = int(round(t * 90000))
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  assert variable_times(open_video(path)) is not None
  out = tmp_path / "out"
  os.makedirs(out)
  write_video_outputs(predictor, path, str(out), settings=run_settings("ckpt"))
  for written in (out / "vfr.mp4", out / "overlays" / "vfr.mp4"):
    with av.open(str(written)) as video:
      got = [frame.time for frame in video.decode(video=0)]
    np.testing.assert_allclose(got, times, atol=1 / 90000 + 1e-9, err_msg=str(written))
  _, plain = tagged_pair(tmp_path, (90, False))  # 25 fps
  assert variable_times(open_video(plain)) is None
