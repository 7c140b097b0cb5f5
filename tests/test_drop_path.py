"""Stochastic depth as the original trains (docs/model.md §9): timm's DropPath on both residual
branches of every block, rates linear over depth, per sample, in training only; and Expert 2's
auxiliary losses in stage 1 only."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.small import small_config

from configs.visage import get_config
from visage_jax.models.internvideo2 import Block, drop_path_rates, drop_path_scales
from visage_jax.training import step as train_step


def test_presets_and_rates():
  assert get_config("6b").model.backbone.drop_path_rate == 0.3
  assert get_config("1b").model.backbone.drop_path_rate == 0.25
  rates = drop_path_rates(48, 0.3)
  assert rates[0] == 0.0 and rates[-1] == 0.3
  np.testing.assert_allclose(np.diff(rates), 0.3 / 47)


def test_keep_rates_and_scaling_per_block():
  """Every block of the 6B's 48, both branches: the kept fraction over 2 × 20000 samples within 3
  standard errors of 1 − p, kept samples scaled by exactly 1/(1 − p), dropped ones zero."""
  rates = drop_path_rates(48, 0.3)
  n = 20000
  scales = np.asarray(drop_path_scales(jax.random.key(0), rates, (1, n)))
  assert scales.shape == (48, 2, 1, n)
  for block, p in enumerate(rates):
    s = scales[block].ravel()
    kept = s > 0
    se = np.sqrt(p * (1 - p) / s.size)
    assert abs(kept.mean() - (1 - p)) <= 3 * se + 1e-12, (block, p, kept.mean())
    np.testing.assert_array_equal(s[kept], np.float32(1) / np.float32(1 - p))
  # the two branches and the blocks draw independently
  both = (scales[-1, 0] > 0) & (scales[-1, 1] > 0)
  assert abs(both.mean() - 0.7**2) <= 3 * np.sqrt(0.49 * 0.51 / n)


def test_a_dropped_branch_adds_nothing_and_a_kept_one_is_scaled():
  from flax import nnx

  cfg = small_config(2, 2).model
  block = Block(cfg, num_experts=1, lora_targets=(), with_lora=False, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 3, 17, cfg.backbone.embed_dim))
  attn = block.ls1(block.attn(block.norm1(x)))
  h = x + attn / 0.8
  mlp = block.ls2(block.mlp(block.norm2(h)))
  scales = jnp.asarray([[[1 / 0.8, 0.0, 1 / 0.8]], [[0.0, 0.0, 1 / 0.8]]])  # (2, E=1, B=3)
  out = block(x, path_scales=scales)
  np.testing.assert_allclose(out[0, 0], h[0, 0], atol=1e-6)  # attention kept, MLP dropped
  np.testing.assert_array_equal(out[0, 1], x[0, 1])  # both dropped: the block is the identity
  np.testing.assert_allclose(out[0, 2], (h + mlp / 0.8)[0, 2], atol=1e-6)


def _model(cfg):
  """A fresh model whose residual branches matter (LayerScale starts at 1e-5, as timm's)."""
  model = train_step.init_model(cfg, seed=0)
  for ls in (model.backbone.blocks.ls1, model.backbone.blocks.ls2):
    ls.gamma[...] = jnp.full(ls.gamma.shape, 0.5, ls.gamma.dtype)
  return model


def _step_outputs(cfg, *seeds):
  """One compiled training step's loss parts for each key seed."""
  import optax

  model = _model(cfg)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = optax.sgd(0.0)
  state = train_step.new_state(cfg, tx, trainable, stats)
  step = jax.jit(train_step.make_step(graphdef, cfg, tx))
  rng = np.random.default_rng(0)
  batch = {
    "frames": rng.integers(0, 255, (2, 4, 56, 56, 3), dtype=np.uint8),
    "saliency": rng.random((2, 4, 56, 56)).astype(np.float32) ** 3,
    "fixations": (rng.random((2, 4, 56, 56)) > 0.98).astype(np.float32),
    "mask": np.ones((2, 4), bool),
  }
  out = []
  for seed in seeds:
    _, parts = step(state, frozen, batch, jax.random.key(seed))
    out.append(jax.device_get(parts))
  return out


@pytest.mark.slow
def test_training_step_with_drop_path_and_the_stage2_loss():
  """A rate so small that every sample is kept, at scale 1 in float32, gives today's step bit for
  bit; a real rate makes the step depend on its key, in stage 1 too (the frozen backbone is
  stochastic while training); evaluation never drops. Expert 2's auxiliary losses: stage 1 only,
  unless `train.aux_loss_stage2`."""
  cfg = small_config(2, 2)
  (base,) = _step_outputs(cfg, 3)
  cfg.model.backbone.drop_path_rate = 1e-12  # the path runs: keep probability 1, scale 1
  (same,) = _step_outputs(cfg, 3)
  assert sorted(base) == sorted(same)
  for k in base:
    np.testing.assert_array_equal(base[k], same[k])
  assert "aux_p23" not in base
  for stage in (1, 2):  # one compiled step each checks drop path and the auxiliary losses
    cfg = small_config(2, stage)
    cfg.model.backbone.drop_path_rate = 0.5
    cfg.train.aux_loss_stage2 = stage == 2
    dropped, again, other = _step_outputs(cfg, 3, 3, 4)
    assert dropped["total"] == again["total"] and other["total"] != dropped["total"]
    assert "aux_p23" in dropped  # stage 1 by default, stage 2 only with aux_loss_stage2
  model = _model(cfg)
  clip = jax.random.normal(jax.random.key(5), (2, 4, 56, 56, 3))
  cfg.model.backbone.drop_path_rate = 0.0
  plain = _model(cfg)
  np.testing.assert_array_equal(model(clip)["fused"], plain(clip)["fused"])
  assert not np.array_equal(model(clip, rng=jax.random.key(0))["fused"], plain(clip)["fused"])


@pytest.mark.slow
def test_checkpoints_written_before_drop_path_still_load(ckpt_small, tmp_path):
  """A config.json without model.backbone.drop_path_rate (every checkpoint converted before it
  existed) reads as rate 0, what the code did then, and predicts what it did."""
  import json
  import shutil

  from visage_jax import checkpoint as ckpt

  old = str(tmp_path / "old")
  shutil.copytree(ckpt_small, old)
  path = os.path.join(old, ckpt.CONFIG_FILE)
  config = json.load(open(path))
  del config["model"]["backbone"]["drop_path_rate"]
  json.dump(config, open(path, "w"))
  cfg, model = ckpt.load_model(old)
  assert cfg.model.backbone.drop_path_rate == 0.0 and model.backbone.drop_path_rate == 0.0
  _, current = ckpt.load_model(ckpt_small)
  size = cfg.model.backbone.img_size
  clip = jax.random.normal(jax.random.key(0), (1, *current.backbone.grid[:1], size, size, 3))
  np.testing.assert_array_equal(model(clip)["fused"], current(clip)["fused"])
