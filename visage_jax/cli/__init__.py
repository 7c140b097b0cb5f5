"""Thin command-line entry points."""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from typing import NoReturn


def run_app(main, prog: str, argv=None, flags_parser=None) -> None:
  """absl's `app.run`, with `--help` listing the command's own flags after its module's docstring.
  absl lists the flags of the module that `sys.argv[0]` names, which for an installed console
  script is the script file, not the module that defined them: so they are registered as that
  file's key flags too; and it shows `__main__`'s docstring, which the script file lacks.
  `prog`: the command's name, for its messages. `flags_parser(argv)`: instead of `parse_flags`.

  SIGTERM (a scheduler's preemption, `timeout`, `kill`) stops the command as Ctrl-C does: what
  it was writing is removed, as the commands' clean-up on KeyboardInterrupt does; a process
  killed outright would leave its temporary files. Either ends in one line, exit code 130."""
  from absl import app, flags

  caller = sys._getframe(1).f_globals  # the module of "__main__" under `python -m`: nothing to do
  for flag in flags.FLAGS.flags_by_module_dict().get(caller["__name__"], []):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  script = sys.modules["__main__"]
  if not script.__doc__:  # --help shows __main__'s docstring: the command's, with its synopsis
    script.__doc__ = caller.get("__doc__")
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt
  try:
    app.run(main, argv=argv, flags_parser=flags_parser or (lambda a: parse_flags(a, prog)))
  except KeyboardInterrupt:
    print(f"{prog}: interrupted: unfinished outputs removed", file=sys.stderr)
    sys.exit(130)


HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "--helpxml", "-?")


def parse_flags(argv, prog: str):
  """absl's flag parsing, with a mistake (an unknown flag, a value of the wrong type, a required
  flag left out, a --config file that cannot be loaded or an unknown preset) as one line, exit
  code 2, where absl writes two and exits 1 and ml_collections a traceback; and `--help` (or its
  kin) exiting 0 once it has shown the flags, where absl exits 1."""
  from absl import flags

  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS.config.keys()  # ml_collections loads a --config file lazily: fail here
    return rest
  except flags.Error as e:
    fail(prog, f"{flag_error_line(e)} (--help lists the flags)")
  except OSError as e:
    if "config file" not in str(e):  # not ml_collections failing to load --config (a pipe...)
      raise
    fail(prog, f"--config: {config_file_error_line(e)}")
  except SystemExit as e:
    asked_for_help = any(a.split("=")[0] in HELP_FLAGS for a in argv[1:])
    sys.exit(0 if asked_for_help and e.code == 1 else e.code)


def flag_error_line(error: Exception) -> str:
  """absl's message about a flag as one line. A --config file whose `get_config` raised (an
  unknown preset) comes with ml_collections' whole traceback: the flag and the error's own line."""
  text = str(error)
  if "Traceback (most recent call last)" in text:
    flag = text.split(": Error whilst parsing config file")[0]
    last = re.sub(r"^[\w.]+(Error|Exception): ", "", text.strip().splitlines()[-1])
    text = f"{flag}: {last}"
  return " ".join(text.split())


def config_file_error_line(error: OSError) -> str:
  """ml_collections' error for a --config file it cannot load, as one line that says where the
  presets are (a relative `configs/visage.py` names a file only from the repository's root)."""
  import configs

  reason = " ".join(str(error).splitlines()[-1].split())
  presets = os.path.join(os.path.dirname(configs.__file__), "visage.py")
  return f"cannot load the config file: {reason}; the presets are in {presets}"


def config_mistake(argv, error: Exception) -> str:
  """ml_collections' error about a --config.* override, as one line naming the flag."""
  import re

  text = " ".join(str(error).replace("\\n", " ").replace("\n", " ").strip("'\" ").split())
  hint = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', text)
  for arg in argv:
    name = arg[2:].split("=", 1)[0]
    if not name.startswith("config."):
      continue
    if hint and name.rsplit(".", 1)[-1] == hint.group(2):
      return f"--{name}: no such field; did you mean --{name.rsplit('.', 1)[0]}.{hint.group(1)}?"
  return f"--config: {text}"


def parse_config_flags(argv, prog: str):
  """`parse_flags` for a command that takes --config, with a mistaken --config.* override (an
  unknown field, a value of the wrong type) as one line instead of ml_collections' traceback."""
  try:
    return parse_flags(argv, prog)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail(prog, config_mistake(argv, e))


def require_extra(prog: str, module: str, what: str) -> None:
  """One line, exit 2, when `module` (PyTorch, say) is not installed: `what` needs it, and the
  `[convert]` extra installs it. Looked up without importing it (torch takes seconds)."""
  import importlib.util

  if importlib.util.find_spec(module) is None:
    fail(
      prog,
      f"{what} needs {module}, which visage-jax installs with its [convert] extra: "
      "pip install 'visage-jax[convert]'",
    )


def check_new_output(prog: str, output: str, flag: str = "--output") -> None:
  """An output that must not exist yet and can be made there (`check_output`): else one line,
  exit 2."""
  if os.path.lexists(output):
    fail(prog, f"{flag}={output} already exists; remove it or choose another {flag}")
  check_output(prog, output, flag)


def must_be_positive(*names: str) -> None:
  """Validators that refuse a value ≤ 0 of these flags at parsing (one line, exit 2); a flag left
  out (None) passes."""
  from absl import flags

  for name in names:
    flags.register_validator(name, lambda v: v is None or v > 0, message="must be > 0")


def fail(prog: str, msg: str) -> NoReturn:
  """The commands' one way to refuse: `PROG: error: MSG` on stderr, exit code 2."""
  print(f"{prog}: error: {msg}", file=sys.stderr)
  sys.exit(2)


def check_output(prog: str, output: str, flag: str = "--output") -> None:
  """An output folder (given as `flag`) that exists or can be made, and can be written: else one
  line, exit 2.

  Nothing is created here, so a run refused later (a bad checkpoint, a missing dataset) leaves no
  empty folder behind; the command makes the folder when it first writes."""
  if os.path.exists(output) and not os.path.isdir(output):
    fail(prog, f"{flag}={output} is an existing file, not a folder")
  target = os.path.abspath(output)
  existing = target
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    fail(prog, f"{flag}={output}: cannot create it: {existing} is a file")
  try:  # a real write: permission bits say nothing to root or on read-only mounts
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    where = "not writable" if existing == target else f"cannot create it in {existing}"
    fail(prog, f"{flag}={output}: {where}: {e.strerror}")


def check_apart(prog: str, output: str, inputs, flag: str = "--output") -> None:
  """An output (given as `flag`) that equals, holds or lies inside one of `inputs` ((flag, path)
  pairs: the files and folders the command reads): one line, exit 2, before any work. Compared
  by real path, so a link or another spelling of the same place is found too."""
  out = os.path.realpath(output)
  for input_flag, path in inputs:
    if not path:
      continue
    real = os.path.realpath(path)
    if out == real:
      how = "is"
    elif real.startswith(out.rstrip(os.sep) + os.sep):
      how = "holds"
    elif out.startswith(real.rstrip(os.sep) + os.sep):
      how = "lies inside"
    else:
      continue
    fail(
      prog,
      f"{flag}={output} {how} {input_flag}={path}: its outputs could overwrite what it reads; "
      "choose an output folder apart from the inputs",
    )
