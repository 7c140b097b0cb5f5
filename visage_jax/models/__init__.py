"""Model code: knows nothing of files, PyTorch or command lines."""
