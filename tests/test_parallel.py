"""The mesh and the parameter rules (`mesh.rules`, `mesh.allow_replicated`): what each weight gets,
and a loud error where a rule cannot be followed."""

from __future__ import annotations

import re
import types

import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs.visage import get_config
from visage_jax.runtime import parallel
from visage_jax.runtime.parallel import ShardingError, ShardingRules, param_spec

MESH = types.SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 2})  # param_spec reads shape
DEFAULT = ShardingRules.from_config(get_config("6b").mesh)


@pytest.mark.parametrize(
  "path,shape,want",
  [
    (("backbone", "blocks", "attn", "qkv", "kernel"), (48, 3200, 9600), P(None, "fsdp", "tensor")),
    (("backbone", "blocks", "mlp", "fc1", "kernel"), (48, 3200, 12800), P(None, "fsdp", "tensor")),
    (("backbone", "blocks", "attn", "proj", "kernel"), (48, 3200, 3200), P(None, "tensor", "fsdp")),
    (("backbone", "blocks", "mlp", "fc2", "kernel"), (48, 12800, 3200), P(None, "tensor", "fsdp")),
    (("backbone", "pos_embed"), (1, 5121, 3200), P(None, None, "fsdp")),
    (("backbone", "blocks", "attn", "qkv", "lora_a"), (48, 1, 3200, 64), P()),  # no rule
    (("expert1", "decoder", "conv", "kernel"), (3, 3, 256, 256), P()),
  ],
)
def test_default_rules_at_6b(path, shape, want):
  assert param_spec(path, shape, MESH, DEFAULT) == want


def test_a_weight_the_rule_cannot_shard_is_an_error_naming_it():
  mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 3})
  fc1 = ("backbone", "blocks", "mlp", "fc1", "kernel")
  message = r"^backbone/blocks/mlp/fc1/kernel: dimension 2 \(size 256\) does not divide over "
  with pytest.raises(ShardingError, match=message + r"mesh axis 'tensor' \(3 devices\)"):
    param_spec(fc1, (4, 64, 256), mesh, DEFAULT)
  assert param_spec(("attn", "qkv", "kernel"), (4, 64, 192), mesh, DEFAULT) == P()  # no match
  allowed = ShardingRules(DEFAULT.rules, parallel.parse_patterns("attn/proj, mlp/fc1"))
  assert param_spec(fc1, (4, 64, 256), mesh, allowed) == P(None, "fsdp", None)  # whole on tensor


def test_rules_from_the_command_line_and_their_mistakes():
  rules = parallel.parse_rules("blocks/mlp/fc1/kernel=_,tensor ;; pos_embed=_,_,fsdp")
  fc1 = (("blocks", "mlp", "fc1", "kernel"), (None, "tensor"))
  assert rules == (fc1, (("pos_embed",), (None, None, "fsdp")))
  with pytest.raises(ValueError, match="is not PATH=AXES"):
    parallel.parse_rules("blocks/mlp/fc1/kernel")
  with pytest.raises(ValueError, match="'model' is not a mesh axis"):
    parallel.parse_rules("blocks/mlp/fc1/kernel=model,_")
  with pytest.raises(ShardingError, match=r"pos_embed: 2 dimensions, its rule .* gives 3"):
    param_spec(("pos_embed",), (5, 7), MESH, ShardingRules(rules))


def test_mesh_shapes():
  devices = jax.devices()[:1]
  assert dict(parallel.make_mesh(devices=devices).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    parallel.make_mesh(data=-1, fsdp=-1, devices=devices)
  with pytest.raises(ValueError, match="needs 2 devices, have 1"):
    parallel.make_mesh(data=2, devices=devices)


def _step_program(mesh):
  """The tiny training step's StableHLO: jitted on `mesh` by `jit_step`, or plainly (None)."""
  import numpy as np
  from helpers.small import small_config

  from visage_jax.training import step as train_step

  cfg = small_config(2, 2)
  model = train_step.init_model(cfg, seed=0)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  if mesh is None:
    step = jax.jit(train_step.make_step(graphdef, cfg, tx))
  else:
    step, _ = train_step.jit_step(graphdef, cfg, tx, mesh, state, frozen)
  batch = {
    "frames": np.zeros((2, 4, 56, 56, 3), np.uint8),
    "saliency": np.zeros((2, 4, 56, 56), np.float32),
    "fixations": np.zeros((2, 4, 56, 56), np.float32),
    "mask": np.ones((2, 4), bool),
  }
  return step.lower(state, frozen, batch, jax.random.key(0)).as_text()


@pytest.mark.slow
def test_activations_are_batch_split_at_block_boundaries():
  """Under `jit_step`'s mesh every block's output (E, B, N, D) is constrained to (_, data+fsdp,
  _, _); a step jitted without a mesh carries no constraint (and `constrain_batch` outside one
  returns its input). That the constraint changes no number: the float64 sharded = single test."""
  import jax.numpy as jnp

  residual = r"sdy.sharding_constraint %\S+ <@mesh, \[\{\}, \{\"data\", \"fsdp\"\}, \{\}, \{\}\]>"
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  assert re.search(residual, _step_program(mesh))
  assert not re.search(residual, _step_program(None))
  x = jnp.ones((2, 3))
  assert parallel.constrain_batch(x) is x
