"""The precision of everything the original runs in float32: necks, decoders, LoRA branches,
normalisation statistics. It is float32; equivalence tests switch it to float64 (with
`jax_enable_x64` and a float64 backbone) so that a comparison of two programs, such as the
sharded and the single-device training step, is not drowned in float32 rounding noise.

The setting is read when modules are built and when functions are traced.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

_HIGH = contextvars.ContextVar("visage_high_precision", default="float32")


def high():
  """The dtype standing for the original's float32 (float32 unless `high_precision` says)."""
  return jnp.dtype(_HIGH.get())


@contextlib.contextmanager
def high_precision(dtype):
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("float64 needs jax_enable_x64")
  token = _HIGH.set(dtype.name)
  try:
    yield
  finally:
    _HIGH.reset(token)
