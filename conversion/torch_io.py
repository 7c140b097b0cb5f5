"""PyTorch checkpoints tensor by tensor: read (pickles memory-mapped, safetensors lazily) and
written (one tensor in memory at a time, in torch.save's and safetensors' own file formats)."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import mmap
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping

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


NOT_A_CHECKPOINT = "not a PyTorch checkpoint (neither a zip archive nor a .safetensors file)"


def load_state_dict(path: str, *, unsafe_pickle: bool = False) -> Mapping:
  """The checkpoint's flat mapping of names to tensors, loaded lazily.

  A pickle's dict may be nested under 'model', 'module' or 'state_dict'. Pickles are read with
  `weights_only=True` (no code runs) and memory-mapped, so tensors are paged in as they are used.
  """
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  if not path.endswith(".safetensors") and not zipfile.is_zipfile(path):  # told before torch loads
    raise ConversionError(f"{path}: cannot read the checkpoint: {NOT_A_CHECKPOINT}")
  import torch

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


def exact_numpy(tensor) -> np.ndarray:
  """A torch tensor as a numpy array of the same dtype and values (bfloat16 included)."""
  import torch

  t = tensor.detach().contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def to_numpy(tensor, dtype) -> np.ndarray:
  """A torch tensor as a numpy array of `dtype` (float32 or bfloat16), rounding as torch does."""
  dtype = np.dtype(dtype)
  if dtype not in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)):
    raise ConversionError(f"unsupported parameter dtype {dtype}")
  return exact_numpy(tensor.detach().to(torch_dtype(dtype)))


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One tensor of a file to write: its name, shape and dtype, and how to compute its value
  (called once, when the tensor's turn comes, so only one value is in memory at a time)."""

  name: str
  shape: tuple
  dtype: np.dtype
  value: Callable[[], np.ndarray]


_SAFETENSORS_DTYPES = {
  np.dtype(np.float32): "F32",
  np.dtype(ml_dtypes.bfloat16): "BF16",
  np.dtype(np.float16): "F16",
  np.dtype(np.float64): "F64",
  np.dtype(np.int64): "I64",
  np.dtype(np.int32): "I32",
  np.dtype(np.uint8): "U8",
  np.dtype(np.bool_): "BOOL",
}


SAFETENSORS_NUMPY = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}


def _bytes_of(spec: TensorSpec) -> np.ndarray:
  """The spec's value as flat bytes, checked against the shape and dtype it announced."""
  array = np.asarray(spec.value())
  array = array if array.flags.c_contiguous else array.copy()
  if array.shape != tuple(spec.shape) or array.dtype != np.dtype(spec.dtype):
    raise ConversionError(
      f"internal: {spec.name} is {array.dtype}{array.shape}, announced as "
      f"{np.dtype(spec.dtype)}{tuple(spec.shape)}"
    )
  return array.reshape(-1).view(np.uint8)


def write_safetensors(path: str, specs: list[TensorSpec], metadata=None) -> dict[str, str]:
  """Write a .safetensors file tensor by tensor; returns {name: sha256 of its bytes}."""
  header, offset = {}, 0
  for spec in specs:
    n = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    header[spec.name] = {
      "dtype": _SAFETENSORS_DTYPES[np.dtype(spec.dtype)],
      "shape": list(spec.shape),
      "data_offsets": [offset, offset + n],
    }
    offset += n
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  digests = {}
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for spec in specs:
      data = _bytes_of(spec)
      f.write(data)
      digests[spec.name] = hashlib.sha256(data).hexdigest()
  return digests


def write_pth(path: str, specs: list[TensorSpec], *, nest: str | None = None) -> dict[str, str]:
  """Write what `torch.save(state_dict)` writes (`{nest: state_dict}` with `nest`), one tensor in
  memory at a time; returns {name: sha256 of its bytes}.

  torch lays the file out from unallocated placeholders (`torch.serialization.skip_data`: the
  zip archive with every record in place, data left empty); each tensor's bytes are then written
  at its record's offset and its CRC-32 into the record's data descriptor and the central
  directory, so the archive is a valid zip as well as a torch checkpoint.
  """
  import torch
  from torch.serialization import skip_data

  placeholders = {  # torch.empty reserves address space only: no page is touched
    spec.name: torch.empty(spec.shape, dtype=torch_dtype(spec.dtype)) for spec in specs
  }
  with skip_data():
    torch.save({nest: placeholders} if nest else placeholders, path)
  del placeholders
  reader = torch._C.PyTorchFileReader(path)
  offsets = [reader.get_record_offset(f"data/{i}") for i in range(len(specs))]
  del reader
  crcs, digests = {}, {}
  with open(path, "r+b") as f:
    for i, (spec, offset) in enumerate(zip(specs, offsets)):
      data = _bytes_of(spec)
      digests[spec.name] = hashlib.sha256(data).hexdigest()
      if not data.size:  # an empty record: its CRC (0) is already right
        continue
      f.seek(offset)
      f.write(data)
      if f.read(4) != b"PK\x07\x08":
        raise ConversionError(f"internal: {path}: no data descriptor after {spec.name}")
      crcs[f"data/{i}"] = zlib.crc32(data)
      f.write(struct.pack("<I", crcs[f"data/{i}"]))
    _write_central_crcs(f, crcs)
  return digests


def torch_dtype(dtype):
  import torch

  if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
    return torch.bfloat16
  return torch.from_numpy(np.zeros((), dtype)).dtype


def _write_central_crcs(f, crcs: dict[str, int]) -> None:
  """Set the CRC-32 of the records named in `crcs` (without the archive's folder) in the zip's
  central directory."""
  f.seek(0)
  with zipfile.ZipFile(f) as archive:
    pos = archive.start_dir
  while True:
    f.seek(pos)
    head = f.read(46)
    if head[:4] != b"PK\x01\x02":
      return
    n, m, k = struct.unpack("<HHH", head[28:34])
    record = f.read(n).decode().split("/", 1)[-1]
    if record in crcs:
      f.seek(pos + 16)
      f.write(struct.pack("<I", crcs[record]))
    pos += 46 + n + m + k
