"""Device meshes and shardings in one place.

The mesh has three named axes: `data` (batch), `fsdp` (batch, and parameter shards for training)
and `tensor` (within-layer model parallelism). Evaluation and prediction shard the batch over
(data, fsdp) and replicate the parameters.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")


DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(env=None) -> bool:
  """Join a multi-process (multi-host) run, before anything else touches JAX's devices.

  From `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`, all three or none; or `VISAGE_DISTRIBUTED=auto` for JAX's own cluster
  detection (Cloud TPU, SLURM, Open MPI). On CPU the processes talk through gloo. Returns whether
  a multi-process run was joined."""
  env = os.environ if env is None else env
  given = {k: env.get(k) for k in DISTRIBUTED_ENV if env.get(k)}
  auto = env.get("VISAGE_DISTRIBUTED", "") == "auto"
  if not given and not auto:
    return False
  if "cpu" in env.get("JAX_PLATFORMS", "").split(","):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if given:
    missing = [k for k in DISTRIBUTED_ENV if k not in given]
    if missing:
      raise ValueError(
        f"multi-process run: {', '.join(missing)} not set (need all three of "
        f"{', '.join(DISTRIBUTED_ENV)})"
      )
    try:
      num, pid = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
    except ValueError:
      raise ValueError(
        f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, got {given}"
      ) from None
    jax.distributed.initialize(
      coordinator_address=given["JAX_COORDINATOR_ADDRESS"], num_processes=num, process_id=pid
    )
  else:
    jax.distributed.initialize()
  return True


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (all by default); -1 takes what is left."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  known = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(zip(AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
      f"mesh {dict(zip(AXES, sizes))} needs {np.prod(sizes)} devices, have {len(devices)}"
    )
  return Mesh(np.asarray(devices).reshape(sizes), AXES)


def put(tree, shardings):
  """`jax.device_put` that also works across processes: each process holds the same host value
  (deterministic initialisation, or read from the same checkpoint) and contributes its own
  devices' shards of it."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp; everything else whole."""
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_size_multiple(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


# Parameter layout: one table, matched against each parameter's path (last matching rule wins is
# avoided: the first match is used). Entries give the mesh axis for each dimension *after* the
# stacked block axis; a dimension whose size the axis does not divide stays whole.
PARAM_RULES = (
  # Megatron split within a block: column-parallel qkv/fc1, row-parallel proj/fc2; the other
  # dimension sharded over fsdp.
  (("blocks", "attn", "qkv", "kernel"), ("fsdp", "tensor")),
  (("blocks", "mlp", "fc1", "kernel"), ("fsdp", "tensor")),
  (("blocks", "attn", "proj", "kernel"), ("tensor", "fsdp")),
  (("blocks", "mlp", "fc2", "kernel"), ("tensor", "fsdp")),
  (("backbone", "pos_embed"), (None, None, "fsdp")),
)


def _matches(path, pattern) -> bool:
  path = [str(p) for p in path]
  it = iter(path)
  return all(any(p == q for p in it) for q in pattern)


def param_spec(path, shape, mesh: Mesh) -> P:
  """PartitionSpec of one parameter (see PARAM_RULES); everything else is replicated."""
  for pattern, axes in PARAM_RULES:
    if _matches(path, pattern):
      lead = len(shape) - len(axes)
      spec = [None] * lead
      for dim, axis in zip(shape[lead:], axes):
        ok = axis is not None and dim % mesh.shape[axis] == 0
        spec.append(axis if ok else None)
      return P(*spec)
  return P()


def state_shardings(state, mesh: Mesh):
  """NamedShardings for every leaf of an nnx.State (or any pytree with paths)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, param_spec(_keys(path), x.shape, mesh)), state
  )


def _keys(path):
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
  return out
