"""Saliency metrics and the training loss.

`saliency`: CC, SIM, KLD, NSS, AUC-Judd and s-AUC in two families, named by `variant`
("ntire2026", the challenge's scorer; "mit", the MIT benchmark's MATLAB code), jittable and
batched; `losses`: the original's training loss. The metrics are also here by name:

    from visage_jax import metrics
    metrics.cc(pred, gt, variant="mit")

Imports nothing of visage_jax but `runtime`. The names are read from `saliency` when first used:
`metrics.maps` (no JAX) is imported by the commands before they pay for importing JAX."""

__all__ = [
  "FLOAT32_EPS",
  "MIT_KLD_EPS",
  "NTIRE_KLD_EPS",
  "ORIGINAL",
  "SAUC_STEP",
  "SAUC_THRESHOLDS",
  "SPARSE_SLOTS",
  "VARIANTS",
  "auc_judd",
  "cc",
  "cv2_resize_linear",
  "kld",
  "level_histograms",
  "nss",
  "ntire2026_preprocess",
  "sauc",
  "sauc_levels",
  "sim",
]


def __getattr__(name: str):
  if name in __all__:
    from visage_jax.metrics import saliency

    return getattr(saliency, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
