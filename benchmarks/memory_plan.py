"""XLA's memory plan of a compiled job, without allocating anything (abstract shapes only).

    python benchmarks/memory_plan.py --config=configs/visage.py:6b --job=predict

job=predict: the dual-expert inference program (both experts and the fusion in one jit) at
batch × num_frames on one device, in the config's dtype (bf16 at 6B). The last line printed is one
JSON object: job, devices, bytes_per_device (arguments + outputs + temporaries − aliased), the
parts, and mesh. job=train lands with the training issue.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET")
flags.DEFINE_enum("job", "predict", ["predict", "train"], "Which program to plan")
flags.DEFINE_integer("batch", 1, "Clips per device")
FLAGS = flags.FLAGS


def main(_):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from visage_jax.models.visage import ViSAGE

  cfg = FLAGS.config
  if FLAGS.job == "train":
    raise SystemExit("memory_plan: --job=train needs the training step (the training issue)")
  model = nnx.eval_shape(lambda: ViSAGE(cfg.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  b = cfg.model.backbone
  clip = jax.ShapeDtypeStruct((FLAGS.batch, b.num_frames, b.img_size, b.img_size, 3), jnp.float32)

  def forward(state, clip):
    out = nnx.merge(graphdef, state)(clip)
    return {k: out[k] for k in (*cfg.model.experts, "fused")}

  compiled = jax.jit(forward).lower(state, clip).compile()
  mem = compiled.memory_analysis()
  total = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )
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
  app.run(main)
