"""Inference entry point:

from visage_jax.inference import Predictor
predictor = Predictor.load(DIR)        # a converted checkpoint and its config
out = predictor.predict_clip(clip)     # clip: float32 (B, T, H, W, 3), already normalised
out["expert1"], out["expert2"], out["fused"]   # float32 (B, T, H, W) probabilities
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from visage_jax import checkpoint as ckpt


class Predictor:
  """Both experts in one jitted program over the shared backbone, plus their logit fusion."""

  def __init__(self, config, model):
    self.config = config
    self.model = model
    self.expert_names = tuple(config.model.experts)
    if not self.expert_names:
      raise ckpt.CheckpointError(
        "this checkpoint holds only a backbone (no expert); convert it with --expert1/--expert2"
      )
    graphdef, state = nnx.split(model)
    self._state = state

    def forward(state, clip):
      out = nnx.merge(graphdef, state)(clip)
      return {k: out[k] for k in (*self.expert_names, "fused")}

    self._forward = jax.jit(forward)

  @classmethod
  def load(cls, directory: str, **model_overrides) -> Predictor:
    """Load a `visage-convert` output; overrides set `config.model` fields (dtype="bfloat16")."""
    config, model = ckpt.load_model(directory, model_overrides=model_overrides)
    return cls(config, model)

  @property
  def clip_shape(self) -> tuple[int, int, int, int]:
    """(T, H, W, C) the model takes."""
    b = self.config.model.backbone
    return (b.num_frames, b.img_size, b.img_size, b.in_chans)

  def predict_clip(self, clip) -> dict[str, np.ndarray]:
    """clip: float32 (B, T, H, W, 3) normalised frames → float32 (B, T, S, S) maps per name."""
    clip = np.asarray(clip)
    if clip.ndim != 5 or tuple(clip.shape[1:]) != self.clip_shape:
      raise ValueError(
        f"clip has shape {clip.shape}; this model takes (B, {', '.join(map(str, self.clip_shape))})"
      )
    out = self._forward(self._state, clip.astype(np.float32))
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

  def predict_video(self, path: str, *, batch_size: int = 1) -> dict:
    """Every frame of a video, once: {"expert1", "expert2", "fused": float32 (N, S, S) at the
    model's size, "fps", "source_size": (H, W)}. Decoding and windows as `visage-predict`."""
    from visage_jax.predict import video_maps

    return video_maps(self, path, batch_size=batch_size)
