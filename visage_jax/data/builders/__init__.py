"""TFDS builders (ArrayRecord) for every layout of `visage_jax.data.layouts`."""
