"""The window stream: group order covers every frame once, frames leave in order through a buffer
that does not grow with the video, prefetch errors surface; the writers' exact fast paths."""

from __future__ import annotations

import numpy as np
import pytest
from reference import inference_windows

from visage_jax.data import encode
from visage_jax.inference import stream, writers
from visage_jax.metrics import maps


class FakeVideo:
  """A VideoReader whose frame i is filled with i % 251 (so frames can be told apart)."""

  def __init__(self, num_frames, fps=30.0, hw=(6, 8)):
    self.path, self.num_frames, self.fps = "fake.mp4", num_frames, fps
    self.height, self.width = hw
    self.decoded = []

  def frames(self, indices):
    idx = np.asarray(indices)
    self.decoded.extend(int(i) for i in idx)
    return np.broadcast_to(
      (idx % 251).astype(np.uint8)[:, None, None, None], (len(idx), self.height, self.width, 3)
    ).copy()


def _as_set(windows):
  return sorted((tuple(i), tuple(m)) for i, m in windows)


@pytest.mark.parametrize("frames", [1, 119, 120, 121, 241])
@pytest.mark.parametrize("stride", [1, 6])
def test_groups_are_the_inference_windows_in_frame_order(frames, stride):
  groups = list(stream.window_groups(frames, 20, stride))
  flat = [w for g in groups for w in g]
  assert _as_set(flat) == _as_set(inference_windows(frames, 20, stride))
  for k, group in enumerate(groups):
    for idx, _ in group:
      assert k * 20 * stride <= idx.min() and idx.max() < (k + 1) * 20 * stride
  real = np.concatenate([idx[mask] for idx, mask in flat])
  assert sorted(real) == list(range(frames))  # every frame exactly once


@pytest.mark.parametrize("frames", [1, 119, 120, 121, 241])
@pytest.mark.parametrize("stride", [1, 6])
def test_one_map_per_frame_in_order_with_a_bounded_buffer(frames, stride):
  video = FakeVideo(frames)
  source = stream.VideoSource(video, stride)
  batches = stream.window_batches(source, window=20, size=4, batch_size=4, keep_frames=True)

  def forward(batch):  # a map that says which frame it belongs to
    return {"fused": np.broadcast_to(batch.indices[..., None, None], (*batch.indices.shape, 2, 2))}

  held = []

  def results():
    for batch in stream.prefetch(batches, 2):
      held.append(len(batch.frames))
      yield batch, forward(batch)

  out = list(stream.frames_in_order(results()))
  assert [f.index for f in out] == list(range(frames))
  assert all(f.maps["fused"][0, 0] == f.index for f in out)
  assert all(f.frame[0, 0, 0] == f.index % 251 for f in out)
  assert sorted(video.decoded) == list(range(frames))  # each frame decoded once
  # a batch of 4 windows starts at most ceil(4 / stride) + 1 groups (stride windows a group)
  assert max(held) <= (-(-4 // stride) + 1) * 20 * stride


@pytest.mark.parametrize("batch_size", [0, -2])
def test_a_batch_of_no_windows_is_refused(batch_size):
  """Not read as "all of them": the whole video would go to the devices as one batch."""
  batches = stream.window_batches(
    stream.VideoSource(FakeVideo(30), 1), window=20, size=4, batch_size=batch_size
  )
  with pytest.raises(ValueError, match=f"batch_size must be at least 1 window, got {batch_size}"):
    next(batches)


def test_buffer_does_not_grow_with_length():
  def peak(frames):
    source = stream.VideoSource(FakeVideo(frames), 6)
    batches = stream.window_batches(source, window=20, size=4, batch_size=2, keep_frames=True)
    waiting, peak_waiting = 0, 0

    def results():
      nonlocal waiting, peak_waiting
      for batch in batches:
        waiting += int(batch.mask[: batch.real].sum())
        peak_waiting = max(peak_waiting, waiting)
        yield batch, {"m": np.zeros((*batch.indices.shape, 1, 1))}

    for _ in stream.frames_in_order(results()):
      waiting -= 1
    return peak_waiting

  assert peak(360) == peak(3600) <= 120 + 2 * 20


def test_prefetch_raises_the_producers_error():
  def bad():
    yield 1
    raise ValueError("broken frame 7")

  it = stream.prefetch(bad(), 2)
  assert next(it) == 1
  with pytest.raises(ValueError, match="broken frame 7"):
    next(it)


def test_overlay_lookup_equals_overlay_on_every_pair():
  levels = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
  frame = np.stack([np.tile(np.arange(256, dtype=np.uint8), (256, 1))] * 3, -1)
  frame[..., 1] = 255 - frame[..., 1]
  np.testing.assert_array_equal(
    writers.overlay_lookup(frame, levels), writers.overlay(frame, levels)
  )
  rng = np.random.default_rng(0)  # rows that do not fill the last block
  frame = rng.integers(0, 256, (100, 37, 3), dtype=np.uint8)
  levels = rng.integers(0, 256, (100, 37), dtype=np.uint8)
  np.testing.assert_array_equal(
    writers.overlay_lookup(frame, levels), writers.overlay(frame, levels)
  )


@pytest.mark.parametrize(
  "shape,out_hw",
  [((224, 224), (720, 1280)), ((224, 224), (100, 1920)), ((36, 64), (36, 64)), ((7, 9), (300, 3))],
)
def test_resized_uint8_equals_resize_then_uint8(shape, out_hw):
  rng = np.random.default_rng(1)
  prob = rng.random(shape).astype(np.float32) ** 3
  prob[0, 0], prob[-1, -1] = 1.0, 0.0
  want = maps.map_to_uint8(maps.resize_linear(np.asarray(prob, np.float64), out_hw))
  np.testing.assert_array_equal(maps.resized_uint8(prob, out_hw), want)


def _hard_maps(shape, seed: int) -> np.ndarray:
  """Four maps whose 8-bit levels are hard to get from float32: every value on a level's edge
  (k/255), blocks of 1 and 0, values a hair above an edge, and a smooth map."""
  rng = np.random.default_rng(seed)
  prob = rng.random((4, *shape)).astype(np.float32) ** 3
  prob[0] = np.round(prob[0] * 255) / 255
  prob[1, : shape[0] // 2] = 1.0
  prob[1, shape[0] // 2 :, : shape[1] // 2] = 0.0
  prob[2] = (np.floor(prob[2] * 255) + 1e-4) / 255
  return prob


@pytest.mark.parametrize(
  "shape,out_hw",
  [((224, 224), (720, 1280)), ((112, 112), (72, 128)), ((36, 64), (36, 64)), ((7, 9), (300, 3))],
)
def test_device_levels_settled_are_resized_uint8(shape, out_hw):
  """The 8-bit maps `visage-predict` has the device make (float32) and the writers settle equal
  the host's float64 `resized_uint8` pixel for pixel; every pixel the device got wrong was
  marked unsure, and few are marked on a smooth map."""
  import jax

  prob = _hard_maps(shape, 3)
  levels, bits = (np.asarray(a) for a in jax.jit(lambda p: maps.device_levels(p, out_hw))(prob))
  wrong_on_device = 0
  for i in range(len(prob)):
    want = maps.resized_uint8(prob[i], out_hw)
    np.testing.assert_array_equal(maps.settle_levels(levels[i], bits[i], prob[i]), want)
    unsure = np.unpackbits(bits[i], count=want.size, bitorder="little").reshape(want.shape)
    wrong = levels[i] != want
    assert not (wrong & ~unsure.astype(bool)).any()
    wrong_on_device += wrong.sum()
    if i == 3:
      assert unsure.mean() < 0.01, unsure.mean()
  assert (wrong_on_device > 0) == (shape != out_hw), wrong_on_device  # the settling matters


@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (17, 30), (1, 1, 3), (33, 65, 3)])
def test_png_pixels_are_the_arrays(tmp_path, shape):
  """Our PNG writer against PIL's reader (which checks every chunk's CRC)."""
  from PIL import Image

  pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
  encode.write_png(str(tmp_path / "a.png"), pixels)
  with Image.open(tmp_path / "a.png") as img:
    img.load()
    assert img.mode == ("L" if len(shape) == 2 else "RGB")
    np.testing.assert_array_equal(np.asarray(img), pixels)
  with pytest.raises(ValueError, match=r"b\.png: expected \(H, W\) or \(H, W, 3\)"):
    encode.write_png(str(tmp_path / "b.png"), np.zeros((2, 2, 4), np.uint8))


def test_png_deflate_is_zlibs_own_bytes(tmp_path):
  """zlib-ng's Huffman-only deflate gives the bytes the standard zlib gives, only faster."""
  import struct
  import zlib

  rows = np.random.default_rng(5).integers(0, 9, (40, 70)).cumsum(1).astype(np.uint8)
  encode.write_png(str(tmp_path / "a.png"), rows)
  data = (tmp_path / "a.png").read_bytes()
  (idat_size,) = struct.unpack(">I", data[33:37])
  assert data[37:41] == b"IDAT"
  filtered = np.concatenate([np.ones((40, 1), np.uint8), rows[:, :1], np.diff(rows, axis=1)], 1)
  coder = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
  assert data[41 : 41 + idat_size] == coder.compress(filtered.tobytes()) + coder.flush()


def test_mp4_encoder_lossless_round_trip(tmp_path):
  from visage_jax.data.video import open_video

  rng = np.random.default_rng(0)
  maps = rng.integers(0, 256, (5, 17, 30), dtype=np.uint8)
  path = str(tmp_path / "m.mp4")
  encode.write_mp4(path, maps, 25, lossless=True)
  back = open_video(path).frames(range(5))
  assert back.shape == (5, 17, 30, 3)
  assert np.abs(back[..., 0].astype(int) - maps).max() <= 1  # the reader's YUV→RGB only


def _pyav_converting_itself(path, frames_rgb, pix_fmt, options):
  """An mp4 whose RGB frames PyAV's encoder converts to `pix_fmt` itself."""
  import av

  container = av.open(path, mode="w", format="mp4")
  stream = container.add_stream("libx264", rate=25)
  stream.height, stream.width = frames_rgb.shape[1:3]
  stream.pix_fmt, stream.options = pix_fmt, options
  for i, f in enumerate(frames_rgb):
    frame = av.VideoFrame.from_ndarray(f, format="rgb24")
    frame.pts = i
    container.mux(stream.encode(frame))
  container.mux(stream.encode())
  container.close()


def _packets(path):
  import av

  with av.open(path) as container:
    return [bytes(p) for p in container.demux(video=0) if p.size]


@pytest.mark.parametrize("lossless", [True, False])
def test_encoder_frames_made_apart_give_the_same_video(tmp_path, lossless):
  """`video_frame` (on the writer threads) makes what PyAV's encoder made of an RGB frame: every
  gray level through the lossless table, odd sizes padded for yuv420p; the same packets."""
  rng = np.random.default_rng(3)
  gray = rng.permutation(np.arange(256 * 4) % 256).reshape(4, 16, 16).astype(np.uint8)
  gray = np.concatenate([gray, rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)], axis=0)
  frames = gray[:, :15, :13] if lossless else np.repeat(gray[..., None], 3, -1)[:, :15, :13]
  path = str(tmp_path / "ours.mp4")
  encode.write_mp4(path, frames, 25, crf=18, lossless=lossless)
  rgb = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, -1)
  if not lossless:  # what Mp4Encoder pads before PyAV converts
    rgb = np.pad(rgb, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
  pix_fmt = encode.LOSSLESS_FORMAT if lossless else encode.VIEWING_FORMAT
  options = {"qp": "0", "preset": "ultrafast"} if lossless else {"crf": "18", "preset": "medium"}
  _pyav_converting_itself(str(tmp_path / "theirs.mp4"), rgb, pix_fmt, options)
  theirs = _packets(str(tmp_path / "theirs.mp4"))
  assert _packets(path) == theirs and len(theirs) == len(frames)
  wrong = encode.video_frame(gray[0], encode.VIEWING_FORMAT if lossless else pix_fmt)
  encoder = encode.Mp4Encoder(str(tmp_path / "w.mp4"), 25, 15, 13, lossless=lossless)
  with pytest.raises(ValueError, match=r"w\.mp4: a yuv420p frame of 16×16, the video is"):
    encoder.add_frame(wrong)
  with pytest.raises(ValueError, match=r"w\.mp4: frame of shape \(15, 13, 4\), the video is 15×13"):
    encoder.add(np.zeros((15, 13, 4), np.uint8))
  encoder.close()


@pytest.mark.parametrize("lossless", [False, True])  # yuv420p, and yuv444p as saliency videos are
def test_sequential_reader_gives_decords_frames(tmp_path, lossless):
  from visage_jax.data.synth import make_video
  from visage_jax.data.video import SequentialReader, VideoError, open_video

  frames, _, _ = make_video(3, 13, (36, 64))
  path = str(tmp_path / "v.mp4")
  encode.write_mp4(path, frames, 25, lossless=lossless)
  video = open_video(path)
  reader = SequentialReader(path, video.num_frames)
  got = np.concatenate([reader.read(0, 5), reader.read(5, 13)])
  np.testing.assert_array_equal(got, video.frames(range(13)))
  reader.close()
  short = SequentialReader(path, 20)  # a reader that counted more frames than the file holds
  with pytest.raises(VideoError, match="ends after 13 frames"):
    short.read(0, 20)


def test_writer_threads_follow_the_measured_cost_a_frame():
  """The writers' pool runs as many frames at once as their CPU cost over the frames' pace asks,
  plus one, within the pool's size; all of it until a window of frames is measured."""
  for cost, gap, threads in ((0.01, 0.05, 2), (0.2, 0.05, 5), (1.0, 0.01, 8), (0.0, 0.05, 1)):
    sizing = writers.PoolSizing(most=8, window=4)
    for _ in range(3):
      sizing.worked(cost)
      sizing.arrived(gap)
    assert sizing.threads == 8
    sizing.worked(cost)
    sizing.arrived(gap)
    assert sizing.threads == threads, (cost, gap, sizing.threads)
