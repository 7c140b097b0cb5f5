"""Thin command-line entry points."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(prog: str, msg: str) -> NoReturn:
  """The commands' one way to refuse: `PROG: error: MSG` on stderr, exit code 2."""
  print(f"{prog}: error: {msg}", file=sys.stderr)
  sys.exit(2)
