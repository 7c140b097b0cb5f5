"""Prediction on whole videos: every frame exactly once (the original's windows), maps as arrays
or as files (challenge-format PNGs, a maps mp4, an overlay mp4), written so that an interrupted
run never leaves a half-written video behind.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from visage_jax import writers
from visage_jax.data.clips import load_batch, window_batches
from visage_jax.data.video import open_video
from visage_jax.data.windows import inference_windows

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def stride_for(fps: float, model_fps: float = 5.0) -> int:
  """Source frames per model frame: 30 fps video at the model's 5 fps → 6."""
  return max(1, int(round(fps / model_fps)))


def video_maps(predictor, path: str, *, batch_size: int = 1, progress=None) -> dict:
  """{name: float32 (N, S, S)} for every map the checkpoint gives ("expert1", "expert2",
  "fused"), one per source frame, plus "fps" and "source_size" (H, W)."""
  video = open_video(path)
  b = predictor.config.model.backbone
  windows = inference_windows(video.num_frames, b.num_frames, stride_for(video.fps))
  out = None
  for chunk, real in window_batches(windows, batch_size):
    batch = load_batch(chunk, video, size=b.img_size)
    maps = predictor.predict_clip(batch["clip"])
    if out is None:
      s = maps["fused"].shape[-1]
      out = {k: np.zeros((video.num_frames, s, s), np.float32) for k in maps}
    for i in range(real):
      idx, mask = batch["indices"][i], batch["mask"][i]
      for k, v in maps.items():
        out[k][idx[mask]] = v[i][mask]
    if progress:
      progress(sum(int(m.sum()) for _, m in chunk[:real]))
  out["fps"] = video.fps
  out["source_size"] = (video.height, video.width)
  return out


def find_videos(inputs) -> list[str]:
  """Video files named directly, or found (non-recursively) in named folders, sorted."""
  out = []
  for item in inputs:
    if os.path.isdir(item):
      out.extend(
        sorted(
          os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(VIDEO_EXTENSIONS)
        )
      )
    else:
      out.append(item)
  return out


def video_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def is_complete(output: str, name: str) -> bool:
  """A video's folder appears (by rename) only after everything else of it is written."""
  return os.path.isdir(os.path.join(output, name))


def write_video_outputs(
  predictor,
  path: str,
  output: str,
  *,
  map_size: str = "source",
  save_experts: bool = False,
  batch_size: int = 1,
  progress=None,
) -> int:
  """Predict one video and write its files; returns the number of frames. Everything goes to
  temporary names first; the maps folder is renamed into place last."""
  name = video_name(path)
  maps = video_maps(predictor, path, batch_size=batch_size, progress=progress)
  video = open_video(path)
  h, w = maps["source_size"]
  n = video.num_frames

  def to_u8(m):
    return writers.map_to_uint8(writers.resize_map(m, (h, w)) if map_size == "source" else m)

  tmp_dir = os.path.join(output, f".{name}.partial")
  tmp_mp4 = os.path.join(output, f".{name}.partial.mp4")
  tmp_overlay = os.path.join(output, "overlays", f".{name}.partial.mp4")
  names = ["fused"] + ([k for k in ("expert1", "expert2") if k in maps] if save_experts else [])
  out_hw = (h, w) if map_size == "source" else tuple(maps["fused"].shape[1:])
  fused_u8 = np.empty((n, *out_hw), np.uint8)
  try:
    for sub in names:
      d = tmp_dir if sub == "fused" else os.path.join(output, "experts", sub, f".{name}.partial")
      shutil.rmtree(d, ignore_errors=True)
      os.makedirs(d)
      for i in range(n):
        u8 = to_u8(maps[sub][i])
        if sub == "fused":
          fused_u8[i] = u8
        writers.write_png(os.path.join(d, writers.map_filename(i)), u8)
    writers.write_mp4(tmp_mp4, fused_u8, maps["fps"], lossless=True)
    os.makedirs(os.path.dirname(tmp_overlay), exist_ok=True)
    frames = video.frames(range(n))
    if map_size == "source":
      big = fused_u8
    else:
      big = np.stack([writers.map_to_uint8(writers.resize_map(m, (h, w))) for m in maps["fused"]])
    blended = np.stack([writers.overlay(f, m) for f, m in zip(frames, big)])
    writers.write_mp4(tmp_overlay, blended, maps["fps"])
    for sub in names[1:]:
      final = os.path.join(output, "experts", sub, name)
      shutil.rmtree(final, ignore_errors=True)
      os.rename(os.path.join(output, "experts", sub, f".{name}.partial"), final)
    os.replace(tmp_overlay, os.path.join(output, "overlays", name + ".mp4"))
    os.replace(tmp_mp4, os.path.join(output, name + ".mp4"))
    os.rename(tmp_dir, os.path.join(output, name))  # last: marks the video complete
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    for p in (tmp_mp4, tmp_overlay):
      if os.path.exists(p):
        os.remove(p)
    raise
  return n
