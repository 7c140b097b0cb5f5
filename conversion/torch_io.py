"""Reading PyTorch checkpoints tensor by tensor: pickles memory-mapped, safetensors lazily."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np


class ConversionError(Exception):
  """A checkpoint cannot be converted. The message names the file and, where known, the key."""


_NESTING_KEYS = ("model", "module", "state_dict")


class _SafetensorsDict(Mapping):
  def __init__(self, path: str):
    from safetensors import safe_open

    self._f = safe_open(path, framework="pt")
    self._keys = list(self._f.keys())
    self._names = set(self._keys)

  def __getitem__(self, key):
    if key not in self._names:
      raise KeyError(key)
    return self._f.get_tensor(key)

  def __contains__(self, key) -> bool:
    return key in self._names

  def __iter__(self) -> Iterator[str]:
    return iter(self._keys)

  def __len__(self) -> int:
    return len(self._keys)


def is_memory_mapped(path: str) -> bool:
  """True when `load_state_dict` reads this file through torch's private file mapping."""
  return not path.endswith(".safetensors")


def load_state_dict(path: str, *, unsafe_pickle: bool = False) -> Mapping:
  """The checkpoint's flat mapping of names to tensors, loaded lazily.

  A pickle's dict may be nested under 'model', 'module' or 'state_dict'. Pickles are read with
  `weights_only=True` (no code runs) and memory-mapped, so tensors are paged in as they are used.
  """
  import torch

  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  try:
    if path.endswith(".safetensors"):
      sd = _SafetensorsDict(path)
    else:
      sd = torch.load(path, map_location="cpu", mmap=True, weights_only=not unsafe_pickle)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    hint = ""
    if "weights_only" in str(e) or "Unsupported global" in str(e):
      hint = " (the pickle holds non-tensor objects; pass --unsafe_pickle if you trust the file)"
    raise ConversionError(f"{path}: cannot read the checkpoint: {msg}{hint}") from None
  for _ in range(3):
    if isinstance(sd, Mapping):
      nested = [k for k in _NESTING_KEYS if k in sd and isinstance(sd[k], Mapping)]
      if nested:
        sd = sd[nested[0]]
        continue
    break
  if not isinstance(sd, Mapping):
    raise ConversionError(f"{path}: expected a dict of tensors, found {type(sd).__name__}")
  return sd


_MADV_DONTNEED = 4


def release_pages(tensor) -> None:
  """Drop the resident pages of a tensor read from a memory-mapped pickle.

  The mapping is private and never written, so the kernel re-reads a page from the file if it is
  touched again; without this, every converted tensor's pages would stay in our resident set until
  the whole file had been mapped in. Only call it for tensors of `torch.load(mmap=True)`.
  """
  if not sys.platform.startswith("linux"):
    return
  try:
    storage = tensor.untyped_storage()
    ptr, n = storage.data_ptr(), storage.nbytes()
  except Exception:
    return
  page = mmap.PAGESIZE
  start = -(-ptr // page) * page
  end = ((ptr + n) // page) * page
  if end > start:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def to_numpy(tensor, dtype) -> np.ndarray:
  """A torch tensor as a numpy array of `dtype` (float32 or bfloat16), rounding as torch does."""
  import torch

  dtype = np.dtype(dtype)
  if dtype == np.dtype(ml_dtypes.bfloat16):
    t = tensor.detach().to(torch.bfloat16).contiguous()
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  if dtype == np.float32:
    return tensor.detach().to(torch.float32).contiguous().numpy()
  raise ConversionError(f"unsupported parameter dtype {dtype}")
