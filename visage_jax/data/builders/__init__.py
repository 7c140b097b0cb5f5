"""TFDS builders (ArrayRecord) for the challenge layout and DHF1K."""
