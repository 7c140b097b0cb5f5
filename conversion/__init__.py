"""PyTorch → Flax conversion of the InternVideo2 backbone and the ViSAGE experts."""
