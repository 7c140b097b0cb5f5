"""Inference entry point:

from visage_jax.inference import Predictor
predictor = Predictor.load(DIR)        # a converted checkpoint and its config
out = predictor.predict_clip(clip)     # clip: float32 (B, T, H, W, 3), already normalised
out["expert1"], out["expert2"], out["fused"]   # float32 (B, T, H, W) probabilities
for frame in predictor.stream_video(path):     # every frame's maps, in order, as they are ready
  frame.index, frame.maps["fused"]
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from visage_jax import checkpoint as ckpt
from visage_jax.inference import stream
from visage_jax.inference.core import maps_program
from visage_jax.runtime import parallel


class Predictor:
  """Both experts in one jitted program over the shared backbone, plus their logit fusion, with
  batches split over every local device (`stream.local_mesh`)."""

  def __init__(self, config, model, mesh=None):
    self.config = config
    self.expert_names = tuple(config.model.experts)
    if not self.expert_names:
      raise ckpt.CheckpointError(
        "this checkpoint holds only a backbone (no expert); convert it with --expert1/--expert2"
      )
    self.mesh = mesh or stream.local_mesh()
    self._graphdef, state = nnx.split(model)
    self.state = jax.device_put(state, parallel.replicated(self.mesh))
    self.forward = maps_program(self._graphdef, mesh=self.mesh)

  @property
  def model(self):
    """The model (an `nnx.Module`) over the placed weights."""
    return nnx.merge(self._graphdef, self.state)

  @classmethod
  def load(cls, directory: str, *, config=None, **model_overrides) -> Predictor:
    """Load a `visage-convert` output; overrides set `config.model` fields (dtype="bfloat16").
    `config`: its config.json, where the caller has read it (`runtime.config_file.read_config`)."""
    config, model = ckpt.load_model(directory, config=config, model_overrides=model_overrides)
    return cls(config, model)

  @property
  def clip_shape(self) -> tuple[int, int, int, int]:
    """(T, H, W, C) the model takes."""
    b = self.config.model.backbone
    return (b.num_frames, b.img_size, b.img_size, b.in_chans)

  def predict_clip(self, clip) -> dict[str, np.ndarray]:
    """clip: float32 (B, T, H, W, 3) normalised frames → float32 (B, T, S, S) maps per name."""
    clip = np.asarray(clip)
    if clip.dtype.kind in "uib":
      raise ValueError(
        f"clip is {clip.dtype}: predict_clip takes CLIP-normalised float frames "
        "(visage_jax.data.video.normalize), not pixel values"
      )
    clip = clip.astype(np.float32, copy=False)
    if clip.ndim != 5 or tuple(clip.shape[1:]) != self.clip_shape:
      raise ValueError(
        f"clip has shape {clip.shape}; this model takes (B, {', '.join(map(str, self.clip_shape))})"
      )
    n = len(clip)
    pad = -n % self.mesh.size  # the batch is split over the devices
    clip = np.concatenate([clip, np.repeat(clip[-1:], pad, axis=0)]) if pad else clip
    out = self.forward(self.state, jax.device_put(clip, parallel.batch_sharding(self.mesh)))
    return {k: np.asarray(v, dtype=np.float32)[:n] for k, v in out.items()}

  def stream_video(self, path: str, *, batch_size: int = 1, stride: int = 0, source_fps=None):
    """`stream.FrameMaps` (index, maps {name: float32 (S, S)}) for every frame of a video (a file,
    or a folder of numbered frames at `source_fps`), in frame order, as the model finishes them:
    memory does not grow with the video's length."""
    from visage_jax.data.video import open_video
    from visage_jax.inference.predict import frame_stream

    video = open_video(path, fps=source_fps)
    return frame_stream(self, video, batch_size=batch_size, stride=stride)

  def predict_video(self, path: str, *, batch_size: int = 1, stride: int = 0, source_fps=None):
    """Every frame of a video (a file, or a folder of numbered frames at `source_fps`), once:
    {"expert1", "expert2", "fused": float32 (N, S, S) at the model's size, "fps", "source_size":
    (H, W)}. The one call that holds a whole video's maps; `stream_video` gives the same maps
    frame by frame."""
    from visage_jax.inference.predict import video_maps

    return video_maps(self, path, batch_size=batch_size, stride=stride, source_fps=source_fps)
