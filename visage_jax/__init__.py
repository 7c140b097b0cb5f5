"""visage-jax: ViSAGE video saliency (InternVideo2 + two decoder experts) in JAX/Flax NNX."""

__version__ = "0.1.0"
