"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def written_whole(path: str, mode: str = "w"):
  """`open(path, mode)` for writing, under a temporary name that becomes `path` when the block
  ends without an error and is removed otherwise: a reader (another process, a rerun after a
  kill) finds the old file or the new one, whole, never a part of it."""
  tmp = f"{path}.partial-{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
