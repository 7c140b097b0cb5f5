"""The sharded training step against the single-device one, and the EMA.

One step on 8 emulated devices, mesh (data=2, fsdp=2, tensor=2), against 1 device, for both
experts and both stages, compared in float64 (`tests/helpers/sharded_train.py`): the sharded
program computes the same numbers. (In float32 the loss agrees to ~1e-7 but the updated
weights only to ~1e-4: Adam's first step divides each gradient entry by its own magnitude, so
reduction-order noise in the smallest entries moves their update by up to the learning rate; run
the helper with `float32` to see it.) This test also caught XLA's grouped-convolution gradient
going wrong under a sharded batch.
"""

from __future__ import annotations

import pytest
from conftest import run_helper


@pytest.mark.slow
def test_sharded_train_step_matches_single_device():
  out = run_helper("sharded_train.py", "float64")
  assert set(out) == {f"expert{e}_stage{s}" for e in (1, 2) for s in (1, 2)}
  for name, r in out.items():
    assert r["dtype"] == "float64", r["dtype"]
    assert r["loss_rel"] <= 1e-5, (name, r["loss_rel"])
    # every updated trainable tensor, elementwise relative to its largest entry
    assert r["weights_rel_all"] <= 1e-5, (name, r["weights_rel_all"])
    assert r["grads_rel"] <= 1e-5, (name, r["grads_rel"])
    assert r["batch_stats_rel"] <= 1e-5, (name, r["batch_stats_rel"])


def test_ema_follows_the_weights_and_the_recipe():
  """EMA(t) = EMA(t−1) + (1 − d)·(w(t) − EMA(t−1)) from a copy of the initial weights, as the
  original's ModelEMA; -1 resolves to the recipe (0.99 for Expert 2 in stage 2 only)."""
  import jax
  import numpy as np
  from helpers.small import small_config

  from visage_jax.runtime import parallel
  from visage_jax.training import step as train_step

  for expert, stage, want in ((1, 1, 0.0), (1, 2, 0.0), (2, 1, 0.0), (2, 2, 0.99)):
    assert train_step.ema_decay(small_config(expert, stage)) == want
  cfg = small_config(1, 2)
  cfg.train.ema_decay = 0.9
  model = train_step.init_model(cfg, seed=1)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  trainable = jax.tree.map(lambda x: x + 0.01, trainable)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  step, shardings = train_step.jit_step(graphdef, cfg, tx, mesh, state, frozen)
  state, frozen = parallel.put((state, frozen), shardings)
  rng = np.random.default_rng(0)
  expected = jax.device_get(state.trainable)
  for i in range(2):
    batch = {
      "frames": rng.integers(0, 255, (2, 4, 56, 56, 3), dtype=np.uint8),
      "saliency": rng.random((2, 4, 56, 56)).astype(np.float32) ** 3,
      "fixations": (rng.random((2, 4, 56, 56)) > 0.98).astype(np.float32),
      "mask": np.ones((2, 4), bool),
    }
    state, _ = step(state, frozen, batch, jax.random.key(i))
    w = jax.device_get(state.trainable)
    expected = jax.tree.map(lambda e, w: e + 0.1 * (w - e), expected, w)
    moved = max(
      float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(expected))
    )
    assert moved > 1e-6  # the EMA lags the weights
  assert int(state.step) == 2
  for a, b in zip(jax.tree.leaves(jax.device_get(state.ema)), jax.tree.leaves(expected)):
    assert np.max(np.abs(a - b)) <= 1e-7


def test_backbone_remat_by_stage_platform_and_size(monkeypatch):
  """Stage 1 never rematerialises; stage 2's "auto" is "full" on accelerators and on a CPU where
  the activations would not fit (6B), "none" where they do; explicit policies are kept."""
  import jax

  from configs.visage import get_config
  from visage_jax.training import step as train_step

  def policy(preset, stage, remat="auto", backend="cpu"):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cfg = get_config(preset)
    cfg.train.stage, cfg.train.remat_policy = stage, remat
    return train_step.training_model_config(cfg).backbone.remat_policy

  assert policy("6b", 1, "full") == "none"
  assert policy("tiny", 2) == "none"
  assert policy("6b", 2) == "full"  # ~57 GB of activations per clip
  assert policy("tiny", 2, backend="gpu") == "full"  # no memory figure: save nothing
  assert policy("tiny", 2, "dots") == "dots"
  assert policy("tiny", 2, "") == "none"  # the model's own


def test_accelerator_remat_keeps_what_fits_half_the_device(monkeypatch):
  """Stage 2's "auto" on an accelerator: the least recomputation whose activations (estimated,
  bf16) for one device's micro-batch fit half the device's memory. 6B at 20 frames keeps about
  28 GB a clip without remat, 17 GB with the matmul outputs only."""
  import jax

  from configs.visage import get_config
  from visage_jax.training import step as train_step

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "device_count", lambda: 1)

  def policy(memory_gb, batch, accum=1):
    monkeypatch.setattr(train_step, "device_memory_bytes", lambda: int(memory_gb * 1e9))
    cfg = get_config("6b")
    cfg.train.stage, cfg.train.remat_policy = 2, "auto"
    cfg.train.batch_size, cfg.train.grad_accum_steps = batch, accum
    return train_step.training_model_config(cfg).backbone.remat_policy

  m = train_step.training_model_config(get_config("6b"))
  m.experts = ("expert2",)
  per_clip = {p: train_step.stored_activation_bytes(m, p) / 1e9 for p in ("none", "save_matmuls")}
  assert 28 < per_clip["none"] < 29 and 17 < per_clip["save_matmuls"] < 18, per_clip
  assert policy(141, 1) == "none"  # H200
  assert policy(141, 2) == "none"
  assert policy(141, 3) == "save_matmuls"
  assert policy(141, 12, accum=4) == "save_matmuls"  # the micro-batch counts
  assert policy(80, 2) == "save_matmuls"  # H100
  assert policy(20, 1) == "save_qkv_attention"  # 7.9 GB
  assert policy(12, 1) == "save_attention"  # 3.1 GB
  assert policy(4, 1) == "full"


@pytest.mark.slow
def test_a_nonfinite_step_changes_nothing():
  """NaN in the batch: the step says so (metrics["finite"]) and gives its state back unchanged."""
  import jax
  import numpy as np
  from helpers.small import small_config

  from visage_jax.training import step as train_step

  cfg = small_config(2, 1)
  model = train_step.init_model(cfg, seed=0)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  step = jax.jit(train_step.make_step(graphdef, cfg, tx))
  rng = np.random.default_rng(0)
  batch = {
    "frames": rng.integers(0, 255, (2, 4, 56, 56, 3), dtype=np.uint8),
    "saliency": rng.random((2, 4, 56, 56)).astype(np.float32),
    "fixations": (rng.random((2, 4, 56, 56)) > 0.98).astype(np.float32),
    "mask": np.ones((2, 4), bool),
  }
  good, parts = step(state, frozen, batch, jax.random.key(0))
  assert bool(parts["finite"]) and int(good.step) == 1
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(good.trainable), jax.tree.leaves(state.trainable))
  )
  batch["saliency"][0, 1, 2, 3] = np.nan
  same, parts = step(state, frozen, batch, jax.random.key(0))
  assert not bool(parts["finite"]) and np.isnan(parts["total"])
  assert int(same.step) == 1  # the step is counted, its update dropped
  kept = (same.trainable, same.batch_stats, same.opt)
  for before, after in zip(jax.tree.leaves((trainable, stats, state.opt)), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_big_batch():
  """4 micro-batches × 2 clips against one step of 8 clips, float64, on one device and on 8
  (`tests/helpers/accum_train.py`): the loss, every gradient tensor and every updated tensor
  within 1e-9 (relative to its largest entry)."""
  out = run_helper("accum_train.py")
  assert set(out) == {
    f"expert{e}_stage{s}_{m}" for e, s in ((2, 1), (1, 2)) for m in ("one_device", "eight_devices")
  }
  for name, r in out.items():
    assert r["dtype"] == "float64", (name, r)
    assert r["loss_rel"] <= 1e-9, (name, r)
    assert r["grads_rel"] <= 1e-9, (name, r)
    assert r["weights_rel_all"] <= 1e-9, (name, r)
    assert r["batch_stats_rel"] <= 1e-9, (name, r)


def test_training_keeps_the_models_attention_in_both_stages(monkeypatch):
  """6B in bf16 at 20 frames (5121 tokens) on a GPU: "auto" is cuDNN's fused attention in both
  stages (stage 2 differentiates it at the padded length, `padded_attention`); an explicit
  choice is kept."""
  import jax

  from configs.visage import get_config
  from visage_jax.models.internvideo2 import num_tokens, resolve_attention_impl
  from visage_jax.training import step as train_step

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  cfg = get_config("6b")
  for stage in (1, 2):
    cfg.train.stage = stage
    m = train_step.training_model_config(cfg)
    assert m.backbone.attention_impl == "auto"
    assert resolve_attention_impl("auto", m.dtype, num_tokens(m.backbone)) == "cudnn"
    cfg.model.backbone.attention_impl = "chunked"
    assert train_step.training_model_config(cfg).backbone.attention_impl == "chunked"
    cfg.model.backbone.attention_impl = "auto"


@pytest.mark.slow
def test_step_flops_agree_with_xlas_count():
  """`perf.train_step_flops` (the MFU's numerator) against XLA's cost analysis of the backbone's
  forward (stage 1) and of the LoRA gradients through it (stage 2), unrolled and with XLA's
  attention so that XLA sees every matmul: within 15 % (XLA also counts the elementwise work,
  ~10 % at this size), and the stage-2/stage-1 ratio within 5 %."""
  import jax.numpy as jnp
  from flax import nnx

  from configs.visage import get_config
  from visage_jax.models.visage import ViSAGE
  from visage_jax.training import flops as perf
  from visage_jax.training import step as train_step

  cfg = get_config("tiny")
  cfg.train.batch_size = 1
  ours, xla = {}, {}
  for stage in (1, 2):
    cfg.train.stage = stage
    m = train_step.training_model_config(cfg)
    m.backbone.scan_layers, m.backbone.attention_impl = False, "xla"
    m.experts = ("expert2",)
    backbone = ViSAGE(m, rngs=nnx.Rngs(0)).backbone
    b = m.backbone
    clip = jnp.zeros((1, b.num_frames, b.img_size, b.img_size, 3), jnp.float32)
    loss = lambda bb, clip=clip: sum(jnp.sum(t) for t in bb(clip)[0])
    program = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam)) if stage == 2 else loss
    xla[stage] = nnx.jit(program).lower(backbone).compile().cost_analysis()["flops"]
    ours[stage] = perf.train_step_flops(cfg, 1)
    assert 0.85 < ours[stage] / xla[stage] <= 1.0, (stage, ours[stage], xla[stage])
  assert abs((ours[2] / ours[1]) / (xla[2] / xla[1]) - 1) < 0.05, (ours, xla)
