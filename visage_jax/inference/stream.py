"""One video → batches of windows → maps in frame order: the video path of `visage-predict`,
`visage-eval` and `Predictor` (the program they run on the batches is `inference.core`'s).

Windows are taken group by group: group k holds window k of every phase (the original's `stride`
interleaved sequences, docs/model.md §10), and together they cover exactly the source frames
[k·T·S, (k+1)·T·S) (T frames a window, S the stride). So frames become final early and leave
through a small reorder buffer in frame order, and nothing held grows with the video's length:
at most `prefetch` + 2 batches of windows and their groups' source frames.

Decoding runs in a background thread that stays `prefetch` batches ahead of the device; a batch
holds `batch_size` windows per local device, split over a data-parallel mesh of all of them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np

from visage_jax.data.video import normalize, resize_frames, sequential, to_gray
from visage_jax.data.windows import sequence_windows

MODEL_FPS = 5.0


def stride_for(fps: float, model_fps: float = MODEL_FPS) -> int:
  """Source frames per model frame: 30 fps video at the model's 5 fps → 6."""
  return max(1, int(round(fps / model_fps)))


def window_groups(num_frames: int, window: int, stride: int) -> Iterator[list]:
  """Lists of (indices, mask) windows: list k holds window k of every phase, which all lie in
  source frames [k·window·stride, (k+1)·window·stride). Together they are exactly
  the original's inference cover: every frame once among the masked-in ones."""
  if num_frames <= 0:
    raise ValueError(f"a video needs at least one frame, got {num_frames}")
  if stride < 1 or window < 1:
    raise ValueError(f"stride and window must be positive, got {stride}, {window}")
  span = window * stride
  for start in range(0, num_frames, span):
    group = []
    for offset in range(min(stride, num_frames)):
      phase = np.arange(start + offset, min(num_frames, start + span), stride)
      if len(phase):
        group.extend(sequence_windows(phase, window))
    yield group


def local_mesh():
  """A data-parallel mesh over this process's devices (each process streams its own videos)."""
  from visage_jax.runtime import parallel

  return parallel.make_mesh(data=-1, devices=jax.local_devices())


@dataclasses.dataclass
class VideoSource:
  """What to read for one video: the frames, and for scoring the saliency video and fixations."""

  video: object  # a VideoReader
  stride: int
  saliency: object | None = None  # a VideoReader of the ground-truth maps
  fixations: list | None = None  # per frame, int (N, 2) [y, x] at source resolution
  negatives: object | None = None  # callable(frame index) -> int (N, 2) [y, x]: s-AUC negatives


@dataclasses.dataclass
class WindowBatch:
  clip: np.ndarray  # float32 (B, T, S, S, 3), normalised
  mask: np.ndarray  # bool (B, T): false on padding (and on whole padded windows)
  indices: np.ndarray  # int64 (B, T): source frame of each position
  real: int  # windows that are not padding
  frames: dict  # {source index: uint8 (H, W, 3)} of groups first seen in this batch, if kept
  gt: np.ndarray | None = None  # uint8 (B, T, H, W)
  fixations: np.ndarray | None = None  # int32 (B, T, P, 2) [y, x] events, -1 rows padding
  negatives: np.ndarray | None = None  # int32 (B, T, Q, 2): other frames' fixations (s-AUC)

  def model_input(self):
    """What the step takes: the clip alone for the maps (`core.maps_program`); with ground truth,
    what the evaluation step takes (`evaluate.on_fixation_points`)."""
    if self.gt is None:
      return self.clip
    out = {"clip": self.clip, "mask": self.mask, "gt": self.gt, "fixations": self.fixations}
    if self.negatives is not None:
      out["negatives"] = self.negatives
    return out


def _decode_group(source: VideoSource, readers, group, size: int, keep_frames: bool):
  """Decode the source frames a group covers once: (per-window items, {index: frame}).
  `readers`: in-order readers (`video.sequential`) of the video and of the saliency video."""
  lo = min(int(idx[0]) for idx, _ in group)
  hi = max(int(idx[m].max()) for idx, m in group) + 1
  small, kept = _read_resized(readers[0], lo, hi, size, keep_frames)
  clip = normalize(small)
  gt = _read_gray(readers[1], lo, hi) if source.saliency else None
  items = []
  for idx, mask in group:
    item = {"clip": clip[idx - lo], "mask": mask, "indices": idx}
    if gt is not None:
      item["gt"] = gt[idx - lo]
    if source.fixations is not None:
      item["fixations"] = [source.fixations[int(i)] for i in idx]
    if source.negatives is not None:
      item["negatives"] = [source.negatives(int(i)) for i in idx]
    items.append(item)
  return items, dict(zip(range(lo, hi), kept))


# A group spans window × stride source frames (120 at 1080p: 750 MB of RGB); they are decoded a
# few at a time, each chunk resized on the pool while the next is decoded.
DECODE_CHUNK = 4
_RESIZE_THREADS = min(4, len(os.sched_getaffinity(0)))
_RESIZE_POOL = concurrent.futures.ThreadPoolExecutor(_RESIZE_THREADS, thread_name_prefix="resize")


def _chunks(lo: int, hi: int) -> list[tuple[int, int]]:
  return [(a, min(hi, a + DECODE_CHUNK)) for a in range(lo, hi, DECODE_CHUNK)]


def _read_resized(reader, lo: int, hi: int, size: int, keep: bool):
  """Frames lo … hi − 1 at the model's size, uint8 (N, S, S, 3), and the source frames if
  `keep` (else none). PIL releases the GIL while it resizes; at most a chunk per pool thread
  waits, so what is held is bounded by the chunks, not the group."""
  pending: collections.deque = collections.deque()
  resized, kept = [], []
  for a, b in _chunks(lo, hi):
    frames = reader.read(a, b)
    if keep:
      kept.extend(frames)
    pending.append(_RESIZE_POOL.submit(resize_frames, frames, size))
    if len(pending) > _RESIZE_THREADS:
      resized.append(pending.popleft().result())
  resized.extend(f.result() for f in pending)
  return np.concatenate(resized), kept


def _read_gray(reader, lo: int, hi: int) -> np.ndarray:
  """Saliency frames lo … hi − 1 as uint8 (N, H, W), a chunk at a time (`to_gray` widens the
  RGB it converts to uint32)."""
  return np.concatenate([to_gray(np.stack(reader.read(a, b))) for a, b in _chunks(lo, hi)])


POINT_SLOTS = 64  # the fewest rows of a batch's padded points; more go up by powers of two


def padded_points(per_window: list[list]) -> np.ndarray:
  """int32 (B, T, P, 2) from B windows' T per-frame [y, x] arrays, padded with rows of -1 to
  P: a power of two at least POINT_SLOTS, so that a few shapes serve a whole run."""
  longest = max(len(p) for frames in per_window for p in frames)
  slots = POINT_SLOTS
  while slots < longest:
    slots *= 2
  out = np.full((len(per_window), len(per_window[0]), slots, 2), -1, np.int32)
  for b, frames in enumerate(per_window):
    for t, p in enumerate(frames):
      out[b, t, : len(p)] = p
  return out


def _stack(items, frames, batch_size: int) -> WindowBatch:
  real = len(items)
  while len(items) < batch_size:  # masked copies keep the compiled shape
    items.append({**items[0], "mask": np.zeros_like(items[0]["mask"])})
  stacked = {}
  for k in items[0]:
    column = [it[k] for it in items]
    stacked[k] = padded_points(column) if k in ("fixations", "negatives") else np.stack(column)
  return WindowBatch(real=real, frames=frames, **stacked)


def window_batches(
  source: VideoSource, *, window: int, size: int, batch_size: int, keep_frames: bool = False
) -> Iterator[WindowBatch]:
  """Batches of exactly `batch_size` windows in group order, the last padded."""
  if batch_size < 1:  # else every window would go into one batch: the whole video at once
    raise ValueError(f"batch_size must be at least 1 window, got {batch_size}")
  readers = [sequential(r) for r in (source.video, source.saliency) if r is not None]
  try:
    items, frames = [], {}
    for group in window_groups(source.video.num_frames, window, source.stride):
      new_items, new_frames = _decode_group(source, readers, group, size, keep_frames)
      frames.update(new_frames)
      for item in new_items:
        items.append(item)
        if len(items) == batch_size:
          yield _stack(items, frames, batch_size)
          items, frames = [], {}
    if items:
      yield _stack(items, frames, batch_size)
  finally:
    for reader in readers:
      reader.close()


def prefetch(iterator: Iterator, depth: int) -> Iterator:
  """Run `iterator` in a background thread, at most `depth` items ahead; its errors are raised
  here, and stopping early stops the thread."""
  q: queue.Queue = queue.Queue(maxsize=max(1, depth))
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for item in iterator:
        if not put((item, None)):
          return
      put((done, None))
    except BaseException as e:  # handed to the consumer
      put((None, e))

  thread = threading.Thread(target=work, name="decode", daemon=True)
  thread.start()
  try:
    while True:
      item, error = q.get()
      if error is not None:
        raise error
      if item is done:
        return
      yield item
  finally:
    stop.set()
    thread.join(timeout=60)


def run_batches(step, state, batches: Iterator, mesh=None):
  """(batch, host outputs) for every batch (anything with `model_input()`); the next batch is
  dispatched before the previous one's outputs are fetched, so the device never waits for the
  host's copy. With `mesh` each batch is split over its batch axes; a mesh across processes
  needs every process to feed the same batches (as validation's do)."""
  from visage_jax.runtime import parallel
  from visage_jax.runtime.trees import tree_to_host

  sharding = None if mesh is None else parallel.batch_sharding(mesh)
  pending = None
  for batch in batches:
    feed = batch.model_input()
    if sharding is not None:
      feed = parallel.put(feed, sharding)
    out = step(state, feed)
    if pending is not None:
      yield pending[0], tree_to_host(pending[1])
    pending = (batch, out)
  if pending is not None:
    yield pending[0], tree_to_host(pending[1])


@dataclasses.dataclass
class FrameMaps:
  index: int  # source frame
  maps: dict  # {name: float32 (S, S)}
  frame: np.ndarray | None  # uint8 (H, W, 3) source frame, when kept
  levels: dict | None = None  # {name: {(H, W): (levels, unsure bits)}}, when the device made them


def _at_frame(v, *, b: int, t: int):
  return v[b, t]


def frames_in_order(results, maps_of=lambda out: out, levels_of=None) -> Iterator[FrameMaps]:
  """Per-frame maps from (batch, outputs) pairs, in source-frame order. `maps_of(outputs)` gives
  {name: (B, T, S, S)}, `levels_of(outputs)` (optional) the 8-bit levels the device made of them
  (`core.levels_program`). Holds only frames that wait for an earlier one."""
  ready: dict[int, tuple] = {}
  frames: dict[int, np.ndarray] = {}
  next_index = 0
  for batch, out in results:
    frames.update(batch.frames)
    maps = maps_of(out)
    levels = levels_of(out) if levels_of else None
    for b in range(batch.real):
      for t in np.nonzero(batch.mask[b])[0]:
        at = functools.partial(_at_frame, b=b, t=t)
        frame_levels = jax.tree.map(at, levels) if levels is not None else None
        ready[int(batch.indices[b, t])] = ({k: at(v) for k, v in maps.items()}, frame_levels)
    while next_index in ready:
      frame_maps, frame_levels = ready.pop(next_index)
      yield FrameMaps(next_index, frame_maps, frames.pop(next_index, None), frame_levels)
      next_index += 1
  if ready:
    raise RuntimeError(f"internal: frames {sorted(ready)[:3]}… never became final")
