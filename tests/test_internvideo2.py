"""The backbone's execution choices (scan or loop, remat or not) do not change its numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visage_jax import checkpoint as ckpt


def _run(directory, clip, **overrides):
  _, model = ckpt.load_model(directory, model_overrides=overrides)
  out = nnx.jit(lambda m, x: m(x, return_features=True))(model, clip)
  return out


@pytest.fixture(scope="module")
def small_clip(clip):
  """The golden clip's first video at 112×112, the size of `ckpt_small` (these tests compare
  execution choices with each other, not with the golden numbers)."""
  return clip[:1, :, ::2, ::2]


@pytest.fixture(scope="module")
def reference(ckpt_small, small_clip):
  return _run(ckpt_small, small_clip)


@pytest.mark.parametrize(
  "overrides",
  [
    {"backbone.scan_layers": False},
    {"backbone.remat_policy": "full"},
    {"backbone.remat_policy": "dots", "backbone.scan_layers": False},
  ],
  ids=["unrolled", "scan+remat_full", "unrolled+remat_dots"],
)
def test_same_outputs(ckpt_small, small_clip, reference, overrides):
  out = _run(ckpt_small, small_clip, **overrides)
  for k in ("expert1", "expert2", "fused", "cls"):
    assert float(jnp.max(jnp.abs(out[k] - reference[k]))) <= 1e-6, k
  for a, b in zip(out["taps"], reference["taps"]):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-6


@pytest.mark.parametrize(
  "policy", ["full", "dots", "save_attention", "save_qkv_attention", "save_matmuls"]
)
def test_remat_gradients_match(ckpt_small, small_clip, policy):
  """Gradients of the LoRA weights through the backbone are the same with each remat policy (the
  named ones keep the block's `checkpoint_name`d results) as without remat."""

  def grads(policy):
    _, model = ckpt.load_model(ckpt_small, model_overrides={"backbone.remat_policy": policy})
    backbone = model.backbone

    def loss(bb):
      taps, cls = bb(jnp.asarray(small_clip))
      return sum(jnp.mean(jnp.square(t)) for t in taps) + jnp.mean(cls)

    return nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam)))(backbone)

  g0 = jax.tree.leaves(grads("none"))
  g1 = jax.tree.leaves(grads(policy))
  assert len(g0) == len(g1) > 0
  for a, b in zip(g0, g1):
    scale = float(jnp.max(jnp.abs(a))) + 1e-12
    assert float(jnp.max(jnp.abs(a - b))) / scale <= 1e-5


def test_lora_dropout_only_with_an_rng(ckpt_small, small_clip, reference):
  _, model = ckpt.load_model(ckpt_small)
  fwd = nnx.jit(lambda m, x, key: m.backbone(x, rng=key)[1])
  a = fwd(model, small_clip, jax.random.key(0))
  b = fwd(model, small_clip, jax.random.key(1))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4  # dropout on the LoRA inputs acts in training
  c = nnx.jit(lambda m, x: m.backbone(x)[1])(model, small_clip)
  np.testing.assert_allclose(np.asarray(c), np.asarray(reference["cls"]), atol=1e-6)


@pytest.mark.parametrize("impl", ["chunked", "per_head", "per_head_recompute"])
def test_blocked_attention_equals_xla_values_and_gradients(impl):
  """Query blocks (with a ragged last block) and one (batch, head) at a time give XLA's attention
  and its gradients."""
  from visage_jax.models.internvideo2 import chunked_attention, per_head_attention

  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 37, 3, 8)), jnp.float32) for _ in range(3))
  full = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.3, implementation="xla")
  part = {
    "chunked": lambda q, k, v: chunked_attention(q, k, v, scale=0.3, chunk=8),
    "per_head": lambda q, k, v: per_head_attention(q, k, v, scale=0.3, recompute=False),
    "per_head_recompute": lambda q, k, v: per_head_attention(q, k, v, scale=0.3, recompute=True),
  }[impl]
  assert np.max(np.abs(full(q, k, v) - part(q, k, v))) <= 1e-6
  w = jnp.asarray(rng.normal(size=(2, 37, 3, 8)), jnp.float32)
  gf = jax.grad(lambda *a: jnp.sum(full(*a) * w), argnums=(0, 1, 2))(q, k, v)
  gp = jax.grad(lambda *a: jnp.sum(part(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(gf, gp):
    assert np.max(np.abs(a - b)) <= 1e-5 * float(np.max(np.abs(a)))


@pytest.mark.parametrize("n,multiple", [(37, 16), (48, 16), (5, 64)])
def test_padded_attention_equals_unpadded_values_and_gradients(n, multiple):
  """The sequence padded to a multiple (the length cuDNN's fused kernel differentiates), the padded
  keys masked by length and the padded queries dropped: XLA's attention and its gradients."""
  from visage_jax.models.internvideo2 import padded_attention

  rng = np.random.default_rng(0)
  q, k, v, w = (jnp.asarray(rng.normal(size=(2, n, 3, 8)), jnp.float32) for _ in range(4))
  full = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.3, implementation="xla")
  padded = lambda q, k, v: padded_attention(
    q, k, v, scale=0.3, implementation="xla", multiple=multiple
  )
  assert padded(q, k, v).shape == (2, n, 3, 8)
  assert np.max(np.abs(full(q, k, v) - padded(q, k, v))) <= 1e-6
  gf = jax.grad(lambda *a: jnp.sum(full(*a) * w), argnums=(0, 1, 2))(q, k, v)
  gp = jax.grad(lambda *a: jnp.sum(padded(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(gf, gp):
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= 1e-5 * float(np.max(np.abs(a)))


@pytest.mark.parametrize(
  "backend,dtype,tokens,expected",
  [
    ("cpu", "float32", 129, "per_head"),
    ("cpu", "bfloat16", 5121, "per_head"),
    ("gpu", "bfloat16", 5121, "cudnn"),  # padded to 5184, in inference and training alike
    ("gpu", "float16", 1025, "cudnn"),
    ("gpu", "float32", 129, "xla"),
    ("gpu", "float32", 5121, "chunked"),  # 6B, 20 frames
    ("tpu", "bfloat16", 5121, "chunked"),
  ],
)
def test_auto_attention_by_platform(monkeypatch, backend, dtype, tokens, expected):
  from visage_jax.models.internvideo2 import resolve_attention_impl

  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  dtype = jnp.dtype(dtype)
  assert resolve_attention_impl("auto", dtype, tokens, 1024) == expected
  assert resolve_attention_impl("xla", dtype, tokens, 1024) == "xla"


def test_cudnn_attention_goes_through_the_padding(monkeypatch):
  """The block's "cudnn" choice calls `padded_attention` with cuDNN at the 64 multiple (run here
  with XLA in cuDNN's place: the block's numbers equal XLA's unpadded attention)."""
  from configs.visage import get_config
  from visage_jax.models import internvideo2

  calls = []
  padded = internvideo2.padded_attention

  def spy(q, k, v, *, scale, implementation, multiple):
    calls.append((q.shape[1], implementation, multiple))
    return padded(q, k, v, scale=scale, implementation="xla", multiple=multiple)

  cfg = get_config("tiny").model
  cfg.backbone.attention_impl = "cudnn"
  attn = internvideo2.Attention(
    cfg, num_experts=1, lora_targets=(), with_lora=False, rngs=nnx.Rngs(0)
  )
  x = jax.random.normal(jax.random.key(1), (1, 2, 37, cfg.backbone.embed_dim))
  monkeypatch.setattr(internvideo2, "padded_attention", spy)
  got = attn(x)
  monkeypatch.undo()
  attn.attention_impl = "xla"
  want = attn(x)
  assert calls == [(37, "cudnn", internvideo2.CUDNN_SEQ_MULTIPLE)]
  assert float(jnp.max(jnp.abs(got - want))) <= 1e-6


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_block_keeps_the_activation_dtype_over_float32_weights(dtype):
  """`Predictor.load(ckpt, dtype="bfloat16")` of a float32 checkpoint: RMSNorm's float32 weight
  promoted the residual stream to float32, which the tap buffer (in the activation dtype) then
  refused inside the scan."""
  from configs.visage import get_config
  from visage_jax.models.internvideo2 import Block

  cfg = get_config("tiny").model
  cfg.dtype = dtype
  assert cfg.param_dtype == "float32"
  block = Block(cfg, num_experts=1, lora_targets=(), with_lora=False, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 2, 5, cfg.backbone.embed_dim)).astype(dtype)
  assert block.norm1(x).dtype == block(x).dtype == jnp.dtype(dtype)
  x32 = x.astype(jnp.float32)
  var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  normed = x32 * jax.lax.rsqrt(var + cfg.backbone.norm_eps)
  np.testing.assert_array_equal(block.norm1(x), normed.astype(dtype))  # weight 1 at init
