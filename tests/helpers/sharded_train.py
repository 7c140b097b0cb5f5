"""One training step on 1 device and on 8 emulated devices (data=2, fsdp=2, tensor=2), for both
experts and both stages; prints the largest relative differences of the loss and the updated
trainable weights as JSON (used by test_train.py).

    python sharded_train.py [float64|float32]

float64 (the test): `jax_enable_x64`, a float64 backbone and `high_precision(float64)` for what
the original runs in float32, so that the two programs are compared above rounding noise. float32:
the model as it trains; Adam's first step divides each gradient entry by its own magnitude, so
reduction-order noise in the smallest entries moves their update by up to the learning rate.
"""

import json
import os
import sys

# LLVM's optimisations off: this helper compiles eight steps and runs each once (104 → 74 s
# alone on the 2-core CI machine; the whole suite passes the same way, PNG pins included).
os.environ["XLA_FLAGS"] = (
  "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

PRECISION = sys.argv[1] if len(sys.argv) > 1 else "float64"
jax.config.update("jax_enable_x64", PRECISION == "float64")

from small import one_step  # noqa: E402
from small import small_config as _small  # noqa: E402

from visage_jax.models.precision import high_precision  # noqa: E402
from visage_jax.runtime import parallel  # noqa: E402


def small_config(expert, stage):
  cfg = _small(expert, stage)
  cfg.model.dtype = cfg.model.param_dtype = PRECISION
  return cfg


def run(cfg, mesh, batch):
  with high_precision(PRECISION):
    return _run(cfg, mesh, batch)


def _run(cfg, mesh, batch):
  state, parts = one_step(cfg, mesh, batch)
  return parts, state.trainable, state.batch_stats


def main():
  rng = np.random.default_rng(0)
  s = 56
  batch = {
    "frames": rng.integers(0, 255, (4, 4, s, s, 3), dtype=np.uint8),
    "saliency": rng.random((4, 4, s, s)).astype(PRECISION) ** 3,
    "fixations": (rng.random((4, 4, s, s)) > 0.98).astype(PRECISION),
    "mask": np.ones((4, 4), bool),
  }
  results = {}
  for expert in (1, 2):
    for stage in (1, 2):
      cfg = small_config(expert, stage)
      one = parallel.make_mesh(devices=jax.devices()[:1])
      eight = parallel.make_mesh(data=2, fsdp=2, tensor=2)
      p1, t1, b1 = run(cfg, one, batch)
      p8, t8, b8 = run(cfg, eight, batch)
      loss_rel = abs(float(p1["total"]) - float(p8["total"])) / abs(float(p1["total"]))
      g1 = jax.tree_util.tree_leaves_with_path(p1["grads"])
      g8 = jax.tree.leaves(p8["grads"])
      w1, w8 = jax.tree.leaves(t1), jax.tree.leaves(t8)
      gmax = max(float(np.max(np.abs(g))) for _, g in g1)
      grad_rel = weights_rel = 0.0
      # every trainable tensor, elementwise: max |w1 − w8| / max |w1|
      weights_rel_all = max(
        float(np.max(np.abs(wa - wb)) / (np.max(np.abs(wa)) + 1e-30)) for wa, wb in zip(w1, w8)
      )
      floor = []  # tensors whose gradient is numerically zero (see test_train.py)
      for (path, a), b, wa, wb in zip(g1, g8, w1, w8):
        amax = float(np.max(np.abs(a)))
        if amax < 1e-6 * gmax:
          floor.append((jax.tree_util.keystr(path), amax, float(np.max(np.abs(wa - wb)))))
          continue
        grad_rel = max(grad_rel, float(np.max(np.abs(a - b))) / amax)
        weights_rel = max(
          weights_rel, float(np.max(np.abs(wa - wb)) / (np.max(np.abs(wa)) + 1e-12))
        )
      srel = 0.0
      for a, b in zip(jax.tree.leaves(b1), jax.tree.leaves(b8)):
        srel = max(srel, float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12)))
      results[f"expert{expert}_stage{stage}"] = {
        "loss": float(p1["total"]),
        "loss_rel": loss_rel,
        "grads_rel": grad_rel,
        "weights_rel": weights_rel,
        "weights_rel_all": weights_rel_all,
        "dtype": str(jax.tree.leaves(t1)[0].dtype),
        "batch_stats_rel": srel,
        "n_trainable": len(w1),
        "numerically_zero_grads": floor,
        "lr": max(cfg.train.lr_lora, cfg.train.lr_decoder_stage1),
      }
  print(json.dumps(results))


if __name__ == "__main__":
  main()
