"""The small training config of the step tests (no side effects on import)."""

from configs.visage import get_config


def small_config(expert, stage):
  """`tiny` at 56×56, 4 frames, 4 blocks (all tapped)."""
  cfg = get_config("tiny")
  b = cfg.model.backbone
  b.img_size, b.num_frames, b.depth, b.taps = 56, 4, 4, (0, 1, 2, 3)
  cfg.model.output_size = 56
  cfg.train.expert, cfg.train.stage = expert, stage
  return cfg
