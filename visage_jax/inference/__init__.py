"""Inference: windows in frame order (`stream`), the per-frame files (`writers`), `Predictor`
(`predictor`) and prediction over files and folders (`predict`).

May import data, models, metrics and runtime; never evaluation, training or `cli`.

    from visage_jax.inference import Predictor
"""

__all__ = ["Predictor"]


def __getattr__(name: str):
  # `Predictor` imports JAX; the commands import this package's file handling before that.
  if name == "Predictor":
    from visage_jax.inference.predictor import Predictor

    return Predictor
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
