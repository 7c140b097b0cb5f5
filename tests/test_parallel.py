"""The mesh and the parameter rules (`mesh.rules`, `mesh.allow_replicated`): what each weight gets,
and a loud error where a rule cannot be followed."""

from __future__ import annotations

import types

import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs.visage import get_config
from visage_jax import parallel
from visage_jax.parallel import ShardingError, ShardingRules, param_spec

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
