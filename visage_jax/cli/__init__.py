"""Thin command-line entry points."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import NoReturn


def fail(prog: str, msg: str) -> NoReturn:
  """The commands' one way to refuse: `PROG: error: MSG` on stderr, exit code 2."""
  print(f"{prog}: error: {msg}", file=sys.stderr)
  sys.exit(2)


def check_output(prog: str, output: str) -> None:
  """An output folder that exists or can be made, and can be written: else one line, exit 2."""
  if os.path.exists(output) and not os.path.isdir(output):
    fail(prog, f"--output={output} is an existing file, not a folder")
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    fail(prog, f"--output={output}: cannot create it: {e.strerror}")
  try:  # a real write: permission bits say nothing to root or on read-only mounts
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=output)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    fail(prog, f"--output={output}: not writable: {e.strerror}")
