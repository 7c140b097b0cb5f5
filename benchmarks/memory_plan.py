"""XLA's memory plan of a compiled job, without allocating anything (abstract shapes only).

    python benchmarks/memory_plan.py --config=configs/visage.py:6b --job=predict

    python benchmarks/memory_plan.py --config=configs/visage.py:6b --job=train

job=predict: the dual-expert inference program (both experts and the fusion in one jit) at
batch × num_frames on one device, in the config's dtype (bf16 at 6B).

job=train: the sharded training step of `visage_jax.training.step` (`--stage`, default 2, for the
config's expert, default Expert 2: auxiliary heads and EMA) on `--devices` emulated CPU devices
(default 8) with `--batch` clips per device (global batch = batch × data × fsdp), mesh from `--mesh`
(data,fsdp,tensor; default 1,8,1: the frozen bf16 backbone, LoRA, optimiser state and EMA sharded
over all 8), the config's `train.remat_policy` ("auto": full at 6B). The CPU compile uses the CPU's
attention, one head's N×N scores at a time (`model.backbone.attention_impl`; "chunked" or "xla"
show what a GPU without cuDNN's kernel would hold).

The last line printed is one JSON object: job, devices, bytes_per_device (arguments + outputs +
temporaries − aliased), the parts, and mesh.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET")
flags.DEFINE_enum("job", "predict", ["predict", "train"], "Which program to plan")
flags.DEFINE_integer("batch", 1, "Clips per device")
flags.DEFINE_integer("devices", 8, "Emulated CPU devices (job=train)")
flags.DEFINE_string("mesh", "1,8,1", "data,fsdp,tensor (job=train)")
flags.DEFINE_integer("stage", 2, "Training stage (job=train)")
FLAGS = flags.FLAGS


def _total(mem) -> int:
  return int(
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )


def plan_train(cfg):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from visage_jax.runtime import parallel
  from visage_jax.training import step as train_step

  data, fsdp, tensor = (int(x) for x in FLAGS.mesh.split(","))
  mesh = parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
  cfg.train.stage = FLAGS.stage
  cfg.train.batch_size = FLAGS.batch * data * fsdp
  model = nnx.eval_shape(lambda: train_step.init_model(cfg))
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  state = jax.eval_shape(lambda t, s: train_step.new_state(cfg, tx, t, s), trainable, stats)
  step, _ = train_step.jit_step(graphdef, cfg, tx, mesh, state, frozen)
  b = cfg.model.backbone
  n, t, s = cfg.train.batch_size, b.num_frames, b.img_size
  batch = {
    "frames": jax.ShapeDtypeStruct((n, t, s, s, 3), jnp.uint8),
    "saliency": jax.ShapeDtypeStruct((n, t, s, s), jnp.float32),
    "fixations": jax.ShapeDtypeStruct((n, t, s, s), jnp.float32),
    "mask": jax.ShapeDtypeStruct((n, t), jnp.bool_),
  }
  rng = jax.eval_shape(lambda: jax.random.key(0))
  compiled = step.lower(state, frozen, batch, rng).compile()
  mem = compiled.memory_analysis()
  count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))  # noqa: E731
  return {
    "job": "train",
    "config": cfg.preset,
    "devices": len(jax.devices()),
    "stage": cfg.train.stage,
    "expert": cfg.train.expert,
    "batch_per_device": FLAGS.batch,
    "global_batch": n,
    "frames": t,
    "dtype": cfg.model.dtype,
    "remat_policy": train_step.training_model_config(cfg).backbone.remat_policy,
    "ema": train_step.ema_decay(cfg) > 0,
    "trainable_params": count(trainable),
    "frozen_params": count(frozen),
    "backend": jax.default_backend(),
    "bytes_per_device": _total(mem),
    "gib_per_device": round(_total(mem) / 2**30, 2),
    "arguments_bytes": int(mem.argument_size_in_bytes),
    "temp_bytes": int(mem.temp_size_in_bytes),
    "output_bytes": int(mem.output_size_in_bytes),
    "alias_bytes": int(mem.alias_size_in_bytes),
    "fits_80gb": _total(mem) <= 80e9,
    "mesh": {"data": data, "fsdp": fsdp, "tensor": tensor},
  }


def main(_):
  cfg = FLAGS.config
  if FLAGS.job == "train":
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FLAGS.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps(plan_train(cfg)))
    return

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from visage_jax.models.visage import ViSAGE

  model = nnx.eval_shape(lambda: ViSAGE(cfg.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  b = cfg.model.backbone
  clip = jax.ShapeDtypeStruct((FLAGS.batch, b.num_frames, b.img_size, b.img_size, 3), jnp.float32)

  def forward(state, clip):
    out = nnx.merge(graphdef, state)(clip)
    return {k: out[k] for k in (*cfg.model.experts, "fused")}

  compiled = jax.jit(forward).lower(state, clip).compile()
  mem = compiled.memory_analysis()
  total = _total(mem)
  print(
    json.dumps(
      {
        "job": "predict",
        "config": cfg.preset,
        "devices": 1,
        "batch_per_device": FLAGS.batch,
        "frames": b.num_frames,
        "dtype": cfg.model.dtype,
        "attention_impl": b.attention_impl,
        "backend": jax.default_backend(),
        "bytes_per_device": int(total),
        "gib_per_device": round(total / 2**30, 2),
        "arguments_bytes": int(mem.argument_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
      }
    )
  )


if __name__ == "__main__":
  from visage_jax.cli import run_app

  run_app(main, "memory_plan.py")
