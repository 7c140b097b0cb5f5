"""Data: decoding video, the dataset layouts, windows, TFDS builders, the pipeline."""
