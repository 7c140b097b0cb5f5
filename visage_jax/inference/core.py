"""The one program every job runs on a batch of windows: the model's maps (each expert's and their
fusion) and, given a scorer, per-frame scores on top, jitted on a mesh. `visage-predict` and
`Predictor` take the maps, `visage-eval` scores them against the ground truth, the trainer's
validation against a prepared split (with its partner's maps); all build theirs here. Beside it,
`levels_program` makes the maps' 8-bit files' pixels where the maps are.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from visage_jax.data.video import normalize
from visage_jax.metrics.maps import device_levels
from visage_jax.models.precision import high
from visage_jax.runtime import parallel


def model_maps(model, clip) -> dict:
  """clip (B, T, S, S, 3) normalised → {expert…, "fused"}: float32 (B, T, S, S) probabilities."""
  out = model(clip)
  return {k: out[k] for k in (*model.expert_names, "fused")}


def _clip(batch):
  """The normalised clip of a batch: the array itself, its "clip", or its uint8 "frames"
  normalised here on the device (a quarter of the bytes to send)."""
  if not isinstance(batch, dict):
    return batch
  if "clip" in batch:
    return batch["clip"]
  return normalize(batch["frames"], xp=jnp, dtype=high())


def maps_program(graphdef, *, mesh=None, score=None, replicate_state: bool = True):
  """jit(state, batch) → `score(maps, batch)`, or the maps ({name: (B, T, S, S)}) themselves.

  state: the model's state, or a tuple of states (the trainer's trainable, statistics, frozen)
  merged into one model. batch: the normalised clip (B, T, S, S, 3), or a dict holding it as
  "clip", or uint8 "frames", with whatever else `score` reads. With `mesh` the batch and the
  outputs are split over its batch axes and the state is replicated on it
  (`replicate_state`), or used as it was placed (the trainer's sharded weights)."""

  def program(state, batch):
    model = nnx.merge(graphdef, *(state if isinstance(state, tuple) else (state,)), copy=True)
    maps = model_maps(model, _clip(batch))
    return maps if score is None else score(maps, batch)

  if mesh is None or not replicate_state:
    return parallel.jit_on_mesh(program, mesh)
  data = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  return parallel.jit_on_mesh(program, mesh, in_shardings=(replicated, data), out_shardings=data)


def levels_program(sizes: dict, *, mesh=None):
  """jit(maps) → {name: {(H, W): (levels, unsure bits)}}: `metrics.maps.device_levels` of each
  named map (B, T, S, S) at each size in `sizes` ({name: [(H, W), …]}), made on the device that
  holds the maps so that only 8-bit pixels travel to the host (`writers.VideoOutputs` settles the
  few unsure ones). Split over `mesh`'s batch axes as the maps are."""

  def program(maps):
    return {name: {hw: device_levels(maps[name], hw) for hw in hws} for name, hws in sizes.items()}

  if mesh is None:
    return parallel.jit_on_mesh(program)
  data = parallel.batch_sharding(mesh)
  return parallel.jit_on_mesh(program, mesh, in_shardings=(data,), out_shardings=data)


def with_levels(step, sizes: dict, *, maps_of, mesh=None):
  """`step` (state, batch) → {…}, its outputs with "levels" added: `levels_program` at `sizes` of
  the maps `maps_of(outputs)` picks, dispatched right after the step on the same devices."""
  make_levels = levels_program(sizes, mesh=mesh)

  def step_with_levels(state, batch):
    out = step(state, batch)
    return {**out, "levels": make_levels(maps_of(out))}

  return step_with_levels
