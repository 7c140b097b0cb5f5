"""The training and evaluation programs lower for TPU: `jax.export` with platforms=("tpu",) on
this CPU machine, for the tiny config (stage 2 of Expert 2, the step with LoRA and an EMA; the
evaluation step with both experts and every metric)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers.small import small_config

from visage_jax.evaluation import evaluate
from visage_jax.models.visage import ViSAGE
from visage_jax.training import step as train_step


def _spec(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), tree)


def _lowers_for_tpu(fn, *args):
  exported = jax.export.export(fn, platforms=("tpu",))(*_spec(args))
  assert exported.platforms == ("tpu",)
  text = exported.mlir_module()
  assert "func.func public @main" in text
  return text


def _config():
  """Stage 2 of Expert 2 with the attention that "auto" picks on a TPU at this size ("xla"; on
  this CPU it would pick "per_head", see test_internvideo2's test_auto_attention_by_platform)."""
  cfg = small_config(2, 2)
  cfg.model.backbone.attention_impl = "xla"
  return cfg


def test_train_step_exports_for_tpu():
  cfg = _config()
  model = train_step.init_model(cfg, seed=0)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  batch = {
    "frames": np.zeros((2, 4, 56, 56, 3), np.uint8),
    "saliency": np.zeros((2, 4, 56, 56), np.float32),
    "fixations": np.zeros((2, 4, 56, 56), np.float32),
    "mask": np.ones((2, 4), bool),
  }
  key = jax.random.key_data(jax.random.key(0))  # the step takes raw key data too
  step = jax.jit(train_step.make_step(graphdef, cfg, tx))
  text = _lowers_for_tpu(step, state, frozen, batch, key)
  assert "stablehlo.dot_general" in text


def test_eval_step_exports_for_tpu():
  cfg = _config().model
  cfg.experts = ("expert1", "expert2")
  graphdef, state = nnx.split(ViSAGE(cfg, rngs=nnx.Rngs(0)))
  step = evaluate.make_eval_step(graphdef)
  batch = {
    "clip": np.zeros((2, 4, 56, 56, 3), np.float32),
    "mask": np.ones((2, 4), bool),
    "gt": np.zeros((2, 4, 36, 64), np.uint8),
    "fixations": np.zeros((2, 4, 36, 64), np.int32),
    "negatives": np.zeros((2, 4, 36, 64), np.int32),
  }
  _lowers_for_tpu(step, state, batch)
