"""Pytrees between devices, hosts and files: leaves by name, and whole arrays on the host."""

from __future__ import annotations

import jax
import numpy as np

from visage_jax import checkpoint as ckpt


def to_host(x) -> np.ndarray:
  """A (possibly multi-process) jax.Array as one numpy array on this host."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _part(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def named(tree) -> dict:
  """{path of strings: leaf}; an nnx Variable's trailing `value` is dropped, so the paths of an
  nnx.State are the model's."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = tuple(_part(k) for k in path)
    if keys and keys[-1] == "value":
      keys = keys[:-1]
    out[keys] = leaf
  return out


def from_named(like, flat: dict):
  """The tree `like` with its leaves taken from `flat` (as `named` lays them out)."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = list(named(like))
  assert len(names) == len(paths)
  return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


def nested(tree) -> dict:
  return ckpt.nested_from_flat(named(tree))
