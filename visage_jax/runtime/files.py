"""Files and folders written whole or not at all: every writer of visage-jax outside Orbax stages
its output here and moves it into place when it is complete, so that a reader (another process,
a rerun after a kill) finds the old output or the new one, whole, never a part of it."""

from __future__ import annotations

import contextlib
import os
import shutil


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


@contextlib.contextmanager
def staging(path: str, *, folder: bool = False):
  """A staging file name or (`folder`) a new folder at `path`, whatever a killed run left there
  removed first; what is left of it when the block ends is removed, error or not. The block
  moves what it made into place (`into_place`)."""
  _remove(path)
  try:
    if folder:
      os.makedirs(path)
    yield path
  finally:
    _remove(path)


def into_place(staged: str, final: str) -> None:
  """A staged file or folder renamed to `final`, replacing a file or a folder there."""
  if os.path.isdir(final) and not os.path.islink(final) and os.listdir(final):
    shutil.rmtree(final)
  os.replace(staged, final)


@contextlib.contextmanager
def staged(final: str, *, folder: bool = False):
  """`final` (a file, or a folder if `folder`) made under a temporary name beside it, which the
  block is given and which becomes `final` when the block ends without an error. A file there is
  replaced, an empty folder too; a folder with anything in it is not (an `OSError`)."""
  with staging(f"{final}.partial-{os.getpid()}", folder=folder) as tmp:
    yield tmp
    os.replace(tmp, final)


@contextlib.contextmanager
def written_whole(path: str, mode: str = "w"):
  """`open(path, mode)` for writing, `staged`."""
  with staged(path) as tmp, open(tmp, mode) as f:
    yield f
