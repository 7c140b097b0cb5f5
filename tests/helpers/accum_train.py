"""Gradient accumulation against the one-big-batch step, in float64: one step on 8 clips (one
device) against 4 micro-batches of 2 on one device and on 8 emulated devices (data=2, tensor=4:
the batch divides over data × accumulation), for Expert 2 in stage 1 (auxiliary losses, GroupNorm)
and Expert 1 in stage 2 (LoRA through the backbone, BatchNorm frozen), some frames masked out.
Prints the largest relative differences as JSON (used by test_train.py).

LoRA dropout is off: a micro-batch's random draws are its own, not the big batch's. Gradient
tensors that are numerically zero (a bias before a normalisation) are left out of "grads_rel"
(relative to themselves it means nothing) but not of "weights_rel_all". Measured: loss ~2e-16,
gradients ~2e-14, weights ~1e-12; a micro-batch share once rounded to float32 showed up here as
1e-8 in the gradients and 5e-6 in Adam's first update.
"""

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from small import one_step, small_config  # noqa: E402

from visage_jax.models.precision import high_precision  # noqa: E402
from visage_jax.runtime import parallel  # noqa: E402


def step_once(cfg, mesh, batch):
  with high_precision("float64"):
    state, parts = one_step(cfg, mesh, batch)
  return state.trainable, state.batch_stats, parts


def grads_rel(a, b):
  """largest_rel over the gradient tensors that are not numerically zero (max below 1e-6 of the
  model's largest gradient entry: a bias before a normalisation, whose gradient is zero but for
  rounding), and how many were left out."""
  gmax = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a))
  pairs = [(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  real = [(x, y) for x, y in pairs if np.max(np.abs(x)) >= 1e-6 * gmax]
  return largest_rel([x for x, _ in real], [y for _, y in real]), len(pairs) - len(real)


def largest_rel(a, b):
  return max(
    float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-30))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def main():
  rng = np.random.default_rng(0)
  s = 56
  mask = np.ones((8, 4), bool)
  mask[1, 2:] = mask[6, :3] = False  # micro-batches with fewer valid frames count for less
  batch = {
    "frames": rng.integers(0, 255, (8, 4, s, s, 3), dtype=np.uint8),
    "saliency": rng.random((8, 4, s, s)) ** 3,
    "fixations": (rng.random((8, 4, s, s)) > 0.98).astype(np.float64),
    "mask": mask,
  }
  one = parallel.make_mesh(devices=jax.devices()[:1])
  eight = parallel.make_mesh(data=2, fsdp=1, tensor=4)
  out = {}
  for expert, stage in ((2, 1), (1, 2)):
    cfg = small_config(expert, stage)
    cfg.model.dtype = cfg.model.param_dtype = "float64"
    cfg.model.lora.dropout = 0.0
    cfg.train.batch_size = 8
    big = step_once(cfg, one, batch)
    cfg.train.grad_accum_steps = 4
    for name, mesh in (("one_device", one), ("eight_devices", eight)):
      acc = step_once(cfg, mesh, batch)
      out[f"expert{expert}_stage{stage}_{name}"] = {
        "loss_rel": abs(float(acc[2]["total"]) / float(big[2]["total"]) - 1),
        "grads_rel": grads_rel(big[2]["grads"], acc[2]["grads"])[0],
        "numerically_zero_grads": grads_rel(big[2]["grads"], acc[2]["grads"])[1],
        "weights_rel_all": largest_rel(big[0], acc[0]),
        "batch_stats_rel": largest_rel(big[1], acc[1]) if jax.tree.leaves(big[1]) else 0.0,
        "parts": sorted(k for k in big[2] if k not in ("finite", "grads")),
        "dtype": str(jax.tree.leaves(acc[0])[0].dtype),
      }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
