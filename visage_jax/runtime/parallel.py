"""Device meshes and shardings in one place.

The mesh has three named axes: `data` (batch), `fsdp` (batch, and parameter shards for training)
and `tensor` (within-layer model parallelism). Evaluation and prediction shard the batch over
(data, fsdp) and replicate the parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from visage_jax.runtime import trees

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
  devices' shards of it. `shardings`: a tree like `tree`, or one sharding for all its leaves."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp; everything else whole."""
  return NamedSharding(mesh, P(BATCH))


def on_mesh(fn, mesh: Mesh):
  """`fn` traced with `mesh` as its abstract mesh, so that `constrain_batch` inside it applies."""

  @functools.wraps(fn)
  def traced_on_mesh(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced_on_mesh


def jit_on_mesh(fn, mesh: Mesh | None = None, *, in_shardings=None, out_shardings=None, **jit):
  """`jax.jit` of `fn` for every job that runs on a mesh: traced on it (`on_mesh`: activations
  split over the batch axes at the backbone's blocks), with `in_shardings`/`out_shardings` where
  given, else those of the placed arguments. Without a mesh, plain `jax.jit`. `jit`: jax.jit's
  other arguments (`donate_argnums`)."""
  if mesh is None:
    return jax.jit(fn, **jit)
  given = {"in_shardings": in_shardings, "out_shardings": out_shardings}
  return jax.jit(on_mesh(fn, mesh), **{k: v for k, v in given.items() if v is not None}, **jit)


def constrain_batch(x, axis: int = 0):
  """`x` split over (data, fsdp) along `axis` and whole along every other dimension, when traced
  under a mesh with those axes (`on_mesh`); as it is otherwise. Pins activations at layer
  boundaries, so that the partitioner does not carry a weight's fsdp/tensor layout into them."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH) <= set(mesh.axis_names):
    return x
  spec = [None] * x.ndim
  spec[axis] = BATCH
  return jax.lax.with_sharding_constraint(x, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_size_multiple(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


class ShardingError(ValueError):
  """A weight cannot be sharded as its rule asks. The message names the weight, the dimension and
  the mesh axis."""


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """How parameters are laid out over the mesh (config `mesh.rules`, `mesh.allow_replicated`).

  `rules`: ((path pattern, axes), ...); the first rule whose pattern (a subsequence of the
  weight's path) matches gives one mesh axis (or None) per trailing dimension; a weight no rule
  matches is replicated. A dimension its axis does not divide is an error, unless a pattern of
  `allow_replicated` matches the weight: then it stays whole."""

  rules: tuple
  allow_replicated: tuple = ()

  @classmethod
  def from_config(cls, mesh_cfg) -> ShardingRules:
    return cls(parse_rules(mesh_cfg.rules), parse_patterns(mesh_cfg.allow_replicated))


def parse_patterns(text: str) -> tuple:
  """ "a/b, c/d" → (("a", "b"), ("c", "d"))."""
  return tuple(tuple(p.strip().split("/")) for p in text.split(",") if p.strip())


def parse_rules(text: str) -> tuple:
  """ "PATH=AXES; ..." (AXES: one mesh axis or _ per trailing dimension) → ((pattern, axes), ...);
  a malformed rule or an unknown axis is a ValueError naming it."""
  out = []
  for rule in (r.strip() for r in text.split(";")):
    if not rule:
      continue
    path, sep, axes = rule.partition("=")
    if not sep or not path.strip() or not axes.strip():
      raise ValueError(f"mesh.rules: {rule!r} is not PATH=AXES (e.g. blocks/mlp/fc1/kernel=fsdp,_)")
    names = tuple(None if a.strip() == "_" else a.strip() for a in axes.split(","))
    unknown = [a for a in names if a is not None and a not in AXES]
    if unknown:
      raise ValueError(f"mesh.rules: {rule!r}: {unknown[0]!r} is not a mesh axis {AXES} (or _)")
    out.append((tuple(path.strip().split("/")), names))
  return tuple(out)


def _matches(path, pattern) -> bool:
  path = [str(p) for p in path]
  it = iter(path)
  return all(any(p == q for p in it) for q in pattern)


def param_spec(path, shape, mesh: Mesh, rules: ShardingRules) -> P:
  """PartitionSpec of one parameter under `rules` (see ShardingRules)."""
  name = "/".join(str(p) for p in path)
  for pattern, axes in rules.rules:
    if not _matches(path, pattern):
      continue
    if len(axes) > len(shape):
      raise ShardingError(f"{name}: {len(shape)} dimensions, its rule {pattern} gives {len(axes)}")
    lead = len(shape) - len(axes)
    spec = [None] * lead
    for i, (dim, axis) in enumerate(zip(shape[lead:], axes)):
      if axis is None or dim % mesh.shape[axis] == 0:
        spec.append(axis)
      elif any(_matches(path, p) for p in rules.allow_replicated):
        spec.append(None)
      else:
        raise ShardingError(
          f"{name}: dimension {lead + i} (size {dim}) does not divide over mesh axis {axis!r} "
          f"({mesh.shape[axis]} devices) as mesh.rules asks; change the mesh or list the weight "
          "in mesh.allow_replicated"
        )
    return P(*spec)
  return P()


def state_shardings(state, mesh: Mesh, rules: ShardingRules):
  """NamedShardings for every leaf of an nnx.State (or any pytree with paths)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, param_spec(trees.path_keys(path), x.shape, mesh, rules)),
    state,
  )
