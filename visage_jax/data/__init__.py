"""Data: decoding video, the challenge and DHF1K layouts, windows, TFDS builders, the pipeline."""
