"""Layers against PyTorch's own operators, on random inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from visage_jax.models.layers import (
  BatchNorm,
  Conv,
  GroupNorm,
  resize_trilinear,
  resolve_resize_conv,
  torch_linspace,
)


@pytest.mark.parametrize(
  "src,dst", [((4, 16, 16), (4, 224, 224)), ((3, 7, 5), (8, 13, 2)), ((5, 20, 9), (2, 6, 9))]
)
def test_trilinear_resize_matches_torch(src, dst):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *src, 3)).astype(np.float32)
  ours = np.asarray(resize_trilinear(jnp.asarray(x), dst))
  ref = F.interpolate(
    torch.from_numpy(x).permute(0, 4, 1, 2, 3), size=dst, mode="trilinear", align_corners=False
  )
  # Separable passes round differently from the fused 8-term kernel: a few float32 ulps.
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 4, 1).numpy(), atol=5e-6)


@pytest.mark.parametrize("src,dst", [((16, 16), (224, 224)), ((5, 7), (13, 4)), ((3, 3), (3, 3))])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_of_resized_matches_torch_folded_or_not(src, dst, bias):
  """A 3×3 'same' convolution of a bilinearly resized map, as torch computes it, in both forms;
  the folded form's gradients equal the separate form's."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, *src, 6)).astype(np.float32)
  conv = Conv(6, 5, (3, 3), use_bias=bias, rngs=nnx.Rngs(0))
  resized = F.interpolate(
    torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, mode="bilinear", align_corners=False
  )
  kernel = torch.from_numpy(np.array(conv.kernel[...])).permute(3, 2, 0, 1)
  tbias = torch.from_numpy(np.array(conv.bias[...])) if bias else None
  ref = F.conv2d(resized, kernel, tbias, padding=1).permute(0, 2, 3, 1).numpy()
  scale = float(np.max(np.abs(ref)))
  graphdef, state = nnx.split(conv)
  w = jnp.asarray(rng.standard_normal(ref.shape).astype(np.float32))
  grads = {}
  for impl in ("folded", "separate"):
    apply = lambda s, x, impl=impl: nnx.merge(graphdef, s).of_resized(x, dst, impl)  # noqa: E731
    np.testing.assert_allclose(apply(state, jnp.asarray(x)), ref, atol=2e-6 * scale)
    loss = lambda s, x, apply=apply: jnp.sum(apply(s, x) * w)  # noqa: E731
    grads[impl] = jax.grad(loss, argnums=(0, 1))(state, jnp.asarray(x))
  for a, b in zip(jax.tree.leaves(grads["folded"]), jax.tree.leaves(grads["separate"])):
    np.testing.assert_allclose(a, b, atol=2e-5 * float(np.max(np.abs(b))))


def test_resize_conv_choice(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert resolve_resize_conv("auto") == "folded"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert resolve_resize_conv("auto") == "separate"
  assert resolve_resize_conv("folded") == "folded"
  with pytest.raises(ValueError, match="model.resize_conv must be one of"):
    resolve_resize_conv("fast")


@pytest.mark.parametrize("channels", [16, 24, 64, 7])
def test_group_norm_matches_torch(channels):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 5, 4, channels)).astype(np.float32) * 3 + 1
  gn = GroupNorm(channels)
  w = rng.standard_normal(channels).astype(np.float32)
  b = rng.standard_normal(channels).astype(np.float32)
  gn.weight[...] = jnp.asarray(w)
  gn.bias[...] = jnp.asarray(b)
  ours = np.asarray(gn(jnp.asarray(x)))
  tgn = torch.nn.GroupNorm(gn.num_groups, channels)
  tgn.weight.data = torch.from_numpy(w)
  tgn.bias.data = torch.from_numpy(b)
  ref = tgn(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_batch_norm_training_and_eval_match_torch():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 3, 4, 4, 8)).astype(np.float32) * 2 + 0.5
  bn = BatchNorm(8)
  tbn = torch.nn.BatchNorm3d(8)
  bn.use_running_average = False
  ours = np.asarray(bn(jnp.asarray(x)))
  ref = tbn(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.running_mean[...]), tbn.running_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(np.asarray(bn.running_var[...]), tbn.running_var.numpy(), atol=1e-6)
  bn.use_running_average = True
  tbn.eval()
  ours = np.asarray(bn(jnp.asarray(x)))
  ref = tbn(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).detach().numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("steps", [224, 7, 2, 100])
def test_linspace_is_torchs(steps):
  # torch's vectorised kernel adds the step within SIMD lanes, so its last bit depends on the
  # CPU's vector width; ours is the scalar formula, within one float32 ulp of any of them.
  ours = torch_linspace(-1, 1, steps)
  np.testing.assert_allclose(ours, torch.linspace(-1, 1, steps).numpy(), rtol=0, atol=1.2e-7)
  assert ours[0] == -1 and ours[-1] == 1
