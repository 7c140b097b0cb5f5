"""Pytrees between devices, hosts and files: leaves by name, and whole arrays on the host."""

from __future__ import annotations

import jax
import numpy as np


def to_host(x) -> np.ndarray:
  """A (possibly multi-process) jax.Array as one numpy array on this host."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def tree_to_host(tree):
  """`to_host` of every leaf; one `jax.device_get` (its copies overlapped) when this process
  holds them all."""
  if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return jax.tree.map(to_host, tree)


def path_keys(path) -> tuple:
  """A pytree path as strings, without the trailing `value` of an nnx Variable (so the paths of
  an nnx.State are the model's)."""
  keys = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        keys.append(str(getattr(k, attr)))
        break
    else:
      keys.append(str(k))
  return tuple(keys[:-1]) if keys and keys[-1] == "value" else tuple(keys)


def named(tree) -> dict:
  """{path of strings (`path_keys`): leaf}."""
  return {path_keys(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
