"""The package's layers (docs/design.md): every import of visage_jax, conversion and configs goes
down or sideways, never up, and no module reaches itself through its imports. Read from the
source (module-level and function-level imports alike), so nothing is imported here."""

from __future__ import annotations

import ast
import os

from conftest import REPO

# Top first. A module may import its own layer's and the lower layers' modules.
LAYERS = [
  ["visage_jax.cli"],
  ["conversion"],
  ["visage_jax.training"],
  ["visage_jax.evaluation"],
  ["visage_jax.inference"],
  ["visage_jax.checkpoint"],
  ["visage_jax.data", "visage_jax.models", "visage_jax.metrics"],
  ["visage_jax.runtime", "configs"],
]
ROOTS = ("visage_jax", "conversion", "configs")


def modules() -> dict[str, str]:
  """{dotted module name: path} of every source module (a package by its __init__)."""
  out = {}
  for root in ROOTS:
    for folder, _, files in os.walk(os.path.join(REPO, root)):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(folder, f)
          name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          out[name.removesuffix(".__init__")] = path
  return out


def imports(path: str, known: set[str]) -> set[str]:
  """The modules of ours that `path` imports anywhere in it (`from a import b` counts as a.b
  when that is a module, else as a)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in known}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
      subs = {f"{node.module}.{a.name}" for a in node.names} & known
      found |= subs or {node.module}
  return found


def layer(module: str) -> int:
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
  found = modules()
  known = set(found)
  return {m: imports(p, known) - {m} for m, p in found.items() if m != "visage_jax"}


def test_every_import_goes_down_or_sideways():
  upward = [
    f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
    for m, targets in graph().items()
    for t in sorted(targets)
    if t != "visage_jax" and layer(t) < layer(m)
  ]
  assert not upward, "\n".join(upward)


def test_no_module_reaches_itself_through_its_imports():
  edges = {m: {t for t in ts if t != "visage_jax"} for m, ts in graph().items()}
  cycles = []
  state: dict[str, int] = {}  # 1: on the path, 2: done

  def visit(m, path):
    state[m] = 1
    for t in sorted(edges.get(m, ())):
      if state.get(t) == 1:
        cycles.append(" -> ".join(path[path.index(t) :] + [t]))
      elif t not in state:
        visit(t, path + [t])
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m, [m])
  assert not cycles, "\n".join(cycles)


def test_the_package_face_and_its_loose_modules():
  loose = [f for f in os.listdir(os.path.join(REPO, "visage_jax")) if f.endswith(".py")]
  assert len(loose) <= 8, loose


def test_every_function_fits_on_a_screen():
  """No function of the package, the conversion or the configs is over 60 lines."""
  long = []
  for path in modules().values():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        lines = node.end_lineno - node.lineno + 1
        if lines > 60:
          long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name}: {lines} lines")
  assert not long, "\n".join(long)
