"""Fused validation on one device, then on a 2 × 2 (data × fsdp) mesh of 4 emulated CPU devices
with the trained state and the partner's weights laid out by the default rules; print the largest
difference of the reported numbers, and where the partner's weights ended up, as JSON. Used by
test_validation.py in a child process (the device count is fixed when JAX starts)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from small import small_config  # noqa: E402

from visage_jax.evaluation.validation import make_validator  # noqa: E402
from visage_jax.runtime import parallel
from visage_jax.runtime.trees import named  # noqa: E402
from visage_jax.training import step as train_step  # noqa: E402


def validate(prepared, mesh):
  """Expert 2 fused with a fixed Expert 1, 4 windows a batch; (report, the partner's weights)."""
  cfg = small_config(2, 1)
  cfg.train.batch_size = 4
  cfg.mesh.fsdp = 2
  graphdef, trainable, stats, frozen = train_step.split(train_step.init_model(cfg, seed=1), cfg)
  if mesh is not None:
    rules = parallel.ShardingRules.from_config(cfg.mesh)
    trainable, stats, frozen = parallel.put(
      (trainable, stats, frozen),
      parallel.state_shardings((trainable, stats, frozen), mesh, rules),
    )
  graphdef_eval = train_step.eval_graphdef(graphdef, cfg, trainable, stats, frozen)
  partner = ("expert1", train_step.init_model(small_config(1, 1), seed=7))
  validator = make_validator(
    graphdef_eval, cfg, prepared, "public_test", partner=partner, mesh=mesh, log=lambda _: None
  )
  return validator(trainable, stats, frozen), nnx.state(partner[1])


def numbers(report, prefix=()):
  out = {}
  for k, v in report.items():
    if isinstance(v, dict):
      out.update(numbers(v, (*prefix, k)))
    elif isinstance(v, float | int):
      out[(*prefix, k)] = float(v)
  return out


def main(prepared):
  assert len(jax.devices()) == 4, jax.devices()
  one, _ = validate(prepared, None)
  mesh = parallel.make_mesh(data=2, fsdp=2)
  four, weights = validate(prepared, mesh)
  a, b = numbers(one), numbers(four)
  assert a.keys() == b.keys(), (a.keys(), b.keys())
  specs = {
    "/".join(path): str(x.sharding.spec) for path, x in named(weights).items() if "qkv" in path
  }
  print(
    json.dumps(
      {
        "map": [one["map"], four["map"]],
        "reported": sorted("/".join(k) for k in a),
        "max_rel_diff": max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for k in a),
        "cc": [a[("cc",)], b[("cc",)]],
        "qkv_specs": specs,
        "devices_holding_qkv": sorted(
          {len(x.sharding.device_set) for path, x in named(weights).items() if "qkv" in path}
        ),
      }
    )
  )


if __name__ == "__main__":
  main(sys.argv[1])
