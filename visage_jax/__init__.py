"""visage-jax: ViSAGE video saliency (InternVideo2 + two decoder experts) in JAX/Flax NNX.

The public face, each name imported when first used (the commands import this package before
they pay for JAX):

    from visage_jax import Predictor, metrics
    Predictor.load(DIR).stream_video("clip.mp4")      # every frame's maps, in order
    metrics.cc(pred, gt, variant="mit")               # both metric families
    evaluate_dataset(DIR, DATA, "public_test", OUT)   # visage-eval's run
    convert(config, backbone=..., expert1=..., expert2=..., output=DIR)   # visage-convert's
    export(weights_of_checkpoint(DIR), OUT)           # back to the original's PyTorch files
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {  # name → (module, attribute; None: the module itself)
  "Predictor": ("visage_jax.inference.predictor", "Predictor"),
  "metrics": ("visage_jax.metrics", None),
  "evaluate_dataset": ("visage_jax.evaluation.evaluate", "evaluate_dataset"),
  "convert": ("conversion.convert", "convert"),
  "export": ("conversion.export", "export"),
  "weights_of_checkpoint": ("conversion.export", "weights_of_checkpoint"),
  "weights_of_workdirs": ("conversion.export", "weights_of_workdirs"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
  if name not in _PUBLIC:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module, attribute = _PUBLIC[name]
  found = importlib.import_module(module)
  return found if attribute is None else getattr(found, attribute)
