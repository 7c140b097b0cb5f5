"""A video's maps as files while the model runs: the challenge's PNGs, the maps mp4 and the
overlay mp4 (`VideoOutputs`), each frame's work on a pool of threads and each video's encoding on
a thread of its own. The 8-bit conversion and the resize are the original's and the challenge's
(`metrics.maps`); the PNG and mp4 bytes are made by `data.encode`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import os
import queue
import threading
import time

import numpy as np

from visage_jax.data.encode import (
  LOSSLESS_FORMAT,
  VIEWING_FORMAT,
  Mp4Encoder,
  video_frame,
  write_png,
)
from visage_jax.metrics.maps import resized_uint8, settle_levels


def map_filename(frame_index: int) -> str:
  """The challenge's name for 0-based frame `frame_index`: eyeMap_%05d.png, 1-based."""
  return f"eyeMap_{frame_index + 1:05d}.png"


def _jet(x: np.ndarray) -> np.ndarray:
  """Matplotlib-style 'jet' colours for x in [0, 1]: (..., 3) float in [0, 1]."""
  r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
  g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
  b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
  return np.stack([r, g, b], axis=-1)


def overlay(frame_u8, map_u8, *, strength: float = 0.6) -> np.ndarray:
  """The map as a colour heat map blended over the frame, more opaque where it is higher."""
  m = np.asarray(map_u8, np.float32) / 255.0
  alpha = (strength * m)[..., None]
  heat = _jet(m) * 255.0
  out = (1 - alpha) * np.asarray(frame_u8, np.float32) + alpha * heat
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@functools.cache
def _overlay_table() -> np.ndarray:
  """uint8 (3, 256·256): `overlay` of every (map level, frame value) pair, channel by channel,
  computed by `overlay` itself, so a lookup gives exactly its pixels."""
  levels = np.repeat(np.arange(256, dtype=np.uint8), 256)  # map level, slow index
  values = np.tile(np.arange(256, dtype=np.uint8), 256)  # frame value, fast index
  return np.stack([overlay(np.repeat(values[:, None], 3, -1), levels)[:, c] for c in range(3)])


def overlay_lookup(frame_u8, map_u8, *, rows: int = 64) -> np.ndarray:
  """`overlay` with the default strength through a table: the same pixels, a few times faster.
  Worked `rows` rows at a time, so that the indices stay in the cache (2× at 1080p)."""
  table = _overlay_table()
  frame, levels = np.asarray(frame_u8), np.asarray(map_u8)
  out = np.empty(frame.shape, np.uint8)
  index = np.empty((rows, frame.shape[1]), np.uint16)  # map level · 256 + frame value
  for r0 in range(0, frame.shape[0], rows):
    r1 = min(r0 + rows, frame.shape[0])
    base = levels[r0:r1].astype(np.uint16) << 8
    for c in range(3):
      np.bitwise_or(base, frame[r0:r1, :, c], out=index[: r1 - r0])
      np.take(table[c], index[: r1 - r0], out=out[r0:r1, :, c])
  return out


def default_workers() -> int:
  """Host worker threads (the writers', visage-eval's s-AUC): the cores this process may use,
  less one for decoding and the device loop."""
  return max(1, len(os.sched_getaffinity(0)) - 1)


class PoolSizing:
  """How many writer threads a video needs, from what its frames cost: every `window` frames, the
  CPU seconds a frame's work took over the seconds between frames arriving (the device's and the
  decoder's pace, the time the producer waited on the writers taken out), plus one, within
  [1, `most`]; `most` until the first window is measured. The spare threads' cores stay with
  decoding and the encoders."""

  def __init__(self, most: int, window: int = 8):
    self.most, self.window, self.threads = most, window, most
    self._costs: collections.deque = collections.deque(maxlen=window)
    self._gaps: collections.deque = collections.deque(maxlen=window)
    self._lock = threading.Lock()

  def worked(self, cpu_seconds: float) -> None:
    with self._lock:
      self._costs.append(cpu_seconds)

  def arrived(self, gap_seconds: float) -> None:
    """A frame came `gap_seconds` after the previous one (not counting waits on the writers)."""
    self._gaps.append(gap_seconds)
    with self._lock:
      measured = len(self._gaps) == self.window and len(self._costs) == self.window
      if measured and sum(self._gaps) > 0:
        need = math.ceil(sum(self._costs) / sum(self._gaps)) + 1
        self.threads = max(1, min(self.most, need))


class _EncoderThread:
  """An `Mp4Encoder` fed frames made by `video_frame`, in order, through a bounded queue by its own
  thread (x264 and PyAV's encode release the GIL, so the two videos of a prediction encode beside
  the PNG writers)."""

  def __init__(self, name, path, fps, height, width, **options):
    self.encoder = Mp4Encoder(path, fps, height, width, **options)
    self._queue: queue.Queue = queue.Queue(maxsize=8)
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._work, name=name, daemon=True)
    self._thread.start()

  def _work(self):
    while (frame := self._queue.get()) is not None:
      if self._error is None:
        try:
          self.encoder.add_frame(frame)
        except BaseException as e:  # raised on the next add or at close
          self._error = e

  def add(self, frame) -> None:
    if self._error is not None:
      raise self._error
    self._queue.put(frame)

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join()
    self.encoder.close()
    if self._error is not None:
      raise self._error


class VideoOutputs:
  """One video's per-frame outputs, written while the model still computes later frames.

  `add(index, maps, frame)` takes frames in order: each expert's map → 8-bit PNG
  (`png_dirs[name]/eyeMap_%05d.png`) at the source size (`map_size="source"`, the challenge's
  bilinear) or the model's; the fused map → the lossless maps mp4; the fused map at source size
  blended over the frame → the overlay mp4. The per-frame work runs on `workers` threads, at most
  2·workers frames ahead, and makes the encoders' frames in their pixel formats; the two encoders
  take them in order and only encode. `close()` waits for all of it and finishes the files;
  `abort()` stops without finishing. Nothing is renamed here. `times`: the frames' times of a
  variable-rate source (`data.video.variable_times`), which the videos keep.
  """

  def __init__(
    self,
    png_dirs: dict,
    *,
    source_hw,
    fps,
    map_size="source",
    maps_mp4=None,
    overlay_mp4=None,
    workers=0,
    times=None,
  ):
    self.png_dirs, self.source_hw, self.map_size = png_dirs, tuple(source_hw), map_size
    workers = workers or default_workers()
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, "write")
    self._limit = 2 * workers
    self.sizing = PoolSizing(workers)
    self._running, self._turn = 0, threading.Condition()
    self._left_add = None  # when `add` last returned: the producer's time between frames
    self._pending: collections.deque = collections.deque()
    self._maps_mp4 = self._overlay_mp4 = None
    self._fps, self._maps_path, self._overlay_path = fps, maps_mp4, overlay_mp4
    self._times = times  # a variable-rate source's frame times: the videos keep them
    self.frames = 0

  def _sized_work(self, *args):
    """`_frame_work` on a worker, at most `sizing.threads` frames at once, its CPU time told to
    the sizing."""
    with self._turn:
      self._turn.wait_for(lambda: self._running < self.sizing.threads)
      self._running += 1
    start = time.thread_time()
    try:
      return self._frame_work(*args)
    finally:
      self.sizing.worked(time.thread_time() - start)
      with self._turn:
        self._running -= 1
        self._turn.notify_all()

  def _frame_work(self, index, maps, frame, levels):
    """Runs on a worker: PNGs, and the fused map and overlay as the encoders' frames (or None).
    Each map is made 8-bit at a size at most once: settled from the device's levels where it
    made them (`levels`: {name: {(H, W): `metrics.maps.device_levels` of the frame}}), else
    resized here."""
    made: dict = {}

    def at_size(name, hw):
      if (name, hw) not in made:
        on_device = (levels or {}).get(name, {}).get(hw)
        if on_device is None:
          made[name, hw] = resized_uint8(maps[name], hw)
        else:
          made[name, hw] = settle_levels(*on_device, maps[name])
      return made[name, hw]

    def written(name):
      return at_size(name, self.source_hw if self.map_size == "source" else maps[name].shape)

    for name, folder in self.png_dirs.items():
      write_png(os.path.join(folder, map_filename(index)), written(name))
    fused = video_frame(written("fused"), LOSSLESS_FORMAT) if self._maps_path else None
    if not self._overlay_path:
      return fused, None
    return fused, video_frame(
      overlay_lookup(frame, at_size("fused", self.source_hw)), VIEWING_FORMAT
    )

  def sizes(self, model_hw=None) -> dict:
    """{name: [(H, W), …]}: the sizes each map is made 8-bit at for these outputs, for the device
    to make them (`core.levels_program`); `model_hw`: the maps' own size (`map_size="model"`)."""
    if self.map_size != "source" and model_hw is None:
      raise ValueError("map_size='model' writes the maps at their own size: give model_hw")
    written = self.source_hw if self.map_size == "source" else tuple(model_hw)
    wanted = {name: {written} for name in self.png_dirs}
    if self._maps_path:
      wanted.setdefault("fused", set()).add(written)
    if self._overlay_path:
      wanted.setdefault("fused", set()).add(self.source_hw)
    return {name: sorted(hws) for name, hws in wanted.items()}

  def _start_encoders(self, fused):
    if self._maps_path:
      h, w = fused.height, fused.width
      self._maps_mp4 = _EncoderThread(
        "encode-maps", self._maps_path, self._fps, h, w, lossless=True, times=self._times
      )
    if self._overlay_path:
      # x264's fastest preset: the overlay is for looking at (crf 18 as before), not scored
      h, w = self.source_hw
      self._overlay_mp4 = _EncoderThread(
        "encode-overlay", self._overlay_path, self._fps, h, w, preset="ultrafast", times=self._times
      )

  def _drain(self, keep: int) -> None:
    while len(self._pending) > keep:
      fused, blended = self._pending.popleft().result()
      if self.frames == 0:
        self._start_encoders(fused)
      if self._maps_mp4:
        self._maps_mp4.add(fused)
      if self._overlay_mp4:
        self._overlay_mp4.add(blended)
      self.frames += 1

  def add(self, index: int, maps: dict, frame=None, levels=None) -> None:
    """Frame `index`'s maps {name: float32 (S, S)}, its source frame (for the overlay) and, where
    the device made them, their 8-bit levels (see `_frame_work`)."""
    if self._overlay_path and frame is None:
      raise ValueError(f"frame {index}: the overlay needs the source frame")
    if self._left_add is not None:
      self.sizing.arrived(time.perf_counter() - self._left_add)
    self._pending.append(self._pool.submit(self._sized_work, index, maps, frame, levels))
    self._drain(self._limit)
    self._left_add = time.perf_counter()

  def close(self) -> None:
    try:
      self._drain(0)
      for encoder in (self._maps_mp4, self._overlay_mp4):
        if encoder:
          encoder.close()
    finally:
      self._pool.shutdown(wait=True)

  def abort(self) -> None:
    for future in self._pending:
      future.cancel()
    self._pool.shutdown(wait=True, cancel_futures=True)
    for encoder in (self._maps_mp4, self._overlay_mp4):
      if encoder:
        try:
          encoder.close()
        except BaseException:  # the files are being thrown away
          pass
