"""What every prepared example holds, and how a video becomes one.

One example per video: the frames of one sampling phase at the training rate (every `stride`-th
source frame from `offset`), resized to the model size as the original does; the saliency maps
resized the same way; fixation events at model size (docs/model.md §8 mapping, before the
3×3 max filter, which the pipeline applies) and at source resolution (for exact scoring).
Frames and maps are stored as raw uint8 arrays, zlib-compressed: reading is a decompress, no
image decoding, so training input stays cheap.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from visage_jax.data.challenge import model_fixation_events
from visage_jax.data.video import resize_frames


@dataclasses.dataclass
class SourceVideo:
  """One video as a builder sees it: readers for frames and maps, and per-frame fixations."""

  name: str
  video: object  # VideoReader
  maps: object  # callable(indices) -> uint8 (N, H, W) saliency maps at source resolution
  fixations: list  # per source frame, int (N, 2) [y, x]


def features(size: int):
  import tensorflow_datasets as tfds

  zlib = tfds.features.Encoding.ZLIB
  return tfds.features.FeaturesDict(
    {
      "name": tfds.features.Text(),
      "frames": tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8, encoding=zlib),
      "saliency": tfds.features.Tensor(shape=(None, size, size), dtype=np.uint8, encoding=zlib),
      # [t, y, x] with t the position in `frame_index`; one row per fixation event
      "fixations_model": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
      "fixations": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
      "frame_index": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "source_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
      "source_fps": tfds.features.Scalar(dtype=np.float32),
    }
  )


def example(src: SourceVideo, *, size: int, stride: int, offset: int) -> dict:
  n = src.video.num_frames
  start = min(offset, n - 1)
  idx = np.arange(start, n, stride)
  h, w = src.video.height, src.video.width
  frames = resize_frames(src.video.frames(idx), size)
  maps = src.maps(idx)
  sal = resize_frames(maps[..., None], size)[..., 0]
  model_rows, source_rows = [], []
  for t, i in enumerate(idx):
    p = np.asarray(src.fixations[int(i)], np.int64).reshape(-1, 2)
    source_rows.append(np.concatenate([np.full((len(p), 1), t), p], axis=1))
    m = model_fixation_events(p, h, w, size)
    model_rows.append(np.concatenate([np.full((len(m), 1), t), m], axis=1))
  return {
    "name": src.name,
    "frames": frames,
    "saliency": sal,
    "fixations_model": np.concatenate(model_rows).astype(np.int32).reshape(-1, 3),
    "fixations": np.concatenate(source_rows).astype(np.int32).reshape(-1, 3),
    "frame_index": idx.astype(np.int32),
    "source_size": np.asarray([h, w], np.int32),
    "source_fps": np.float32(src.video.fps),
  }
