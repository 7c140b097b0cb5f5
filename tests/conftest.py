"""Shared fixtures: the golden files, converted checkpoints, and compiled forwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA cache for the whole run, inherited by the xdist workers and by every command
# a test starts: the same programs compiled in many child processes (the tiny forward of each
# visage-predict run, the small train step of each visage-train run) compile once. A size limit
# turns on JAX's file locks, so that no process reads an entry another is still writing.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="visage-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  _MADE_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
else:
  _MADE_CACHE = None


def pytest_unconfigure(config):
  if _MADE_CACHE and not hasattr(config, "workerinput"):  # the run's first process made it
    shutil.rmtree(_MADE_CACHE, ignore_errors=True)


def pytest_configure(config):
  """`--dist loadgroup` (pyproject's addopts) keeps each xdist_group module on one worker, so that
  its costly module fixtures are built once. pytest 9.2 with pytest-xdist 3.8 ignores the groups
  without a word (pytest-dev/pytest-xdist#1386): refuse that pair rather than run slower."""
  from importlib.metadata import version

  from packaging.version import Version

  if config.getoption("dist", "no") != "loadgroup":
    return
  xdist = Version(version("pytest-xdist"))
  if Version(pytest.__version__) >= Version("9.2") and xdist <= Version("3.8.0"):
    raise pytest.UsageError(
      f"pytest {pytest.__version__} with pytest-xdist {xdist} ignores xdist_group marks "
      "(pytest-dev/pytest-xdist#1386); install the test extra's pytest (<9.2)"
    )


# The original's outputs on tiny models, and the real 6B files' key lists (tests/golden/README.md)
GOLDEN = SPEC = os.path.join(REPO, "tests", "golden")
CONFIG = os.path.join(REPO, "configs", "visage.py")


def convert_cmd() -> list[str]:
  exe = shutil.which("visage-convert")
  if exe is None:  # not installed (running from a bare checkout): the same entry point
    return [sys.executable, "-m", "visage_jax.cli.convert"]
  return [exe]


def run_convert(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [*convert_cmd(), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
  )


def run_helper(script: str, *args: str) -> dict:
  """Run tests/helpers/SCRIPT in a child process (device counts are fixed when JAX starts) and
  return the JSON object it prints last."""
  import json

  env = dict(os.environ, PYTHONPATH=REPO)
  res = subprocess.run(
    [sys.executable, os.path.join(REPO, "tests", "helpers", script), *args],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def refused_without_jax(module: str, *args: str) -> tuple[str, bool]:
  """Run command `module`'s main with `args` in a child that must exit 2: (its stderr, whether
  JAX had been imported by then). A user's mistake is told before the seconds JAX costs."""
  code = (
    "import runpy, sys\n"
    f"sys.argv = {[module, *args]!r}\n"
    "try:\n"
    f"  runpy.run_module({module!r}, run_name='__main__')\n"
    "except SystemExit as e:\n"
    "  assert e.code == 2, e.code\n"
    "  print('jax' in sys.modules)\n"
  )
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert res.returncode == 0 and res.stdout.strip() in ("True", "False"), res.stdout + res.stderr
  return res.stderr, res.stdout.strip() == "True"


def golden(name: str) -> str:
  path = os.path.join(GOLDEN, name)
  if not os.path.exists(path):
    pytest.fail(f"golden file {path} is missing from the repository")
  return path


def convert_golden(out_dir: str, *extra: str, experts=("expert1", "expert2")) -> str:
  args = [
    f"--config={CONFIG}:tiny",
    f"--backbone={golden('backbone_t4.pt')}",
    f"--output={out_dir}",
  ]
  for e in experts:
    args.append(f"--{e}={golden(e + '.pth')}")
  res = run_convert(*args, *extra)
  assert res.returncode == 0, res.stderr[-3000:]
  return out_dir


@pytest.fixture(scope="session")
def expected():
  return dict(np.load(golden("expected.npz")))


@pytest.fixture(scope="session")
def expected_fusedpath():
  return dict(np.load(golden("expected_fusedpath.npz")))


@pytest.fixture(scope="session")
def clip(expected):
  """The golden clip, channels last: (B, T, H, W, 3)."""
  return expected["x"].transpose(0, 2, 3, 4, 1).copy()


def _convert_float32(tmp_path_factory, mlp_impl: str, *extra: str, name: str = "") -> str:
  out = str(tmp_path_factory.mktemp("ckpt") / (name or mlp_impl))
  return convert_golden(
    out,
    f"--config.model.backbone.mlp_impl={mlp_impl}",
    "--config.model.dtype=float32",
    "--config.model.param_dtype=float32",
    *extra,
  )


@pytest.fixture(scope="session")
def ckpt_plain(tmp_path_factory):
  return _convert_float32(tmp_path_factory, "plain")


@pytest.fixture(scope="session")
def ckpt_fused(tmp_path_factory):
  return _convert_float32(tmp_path_factory, "fused")


@pytest.fixture(scope="session")
def ckpt_small(tmp_path_factory):
  """The golden weights converted for 112×112 input and maps (the position embedding resized):
  a window costs a sixth of the 224 model's on the CPU (0.16 against 0.94 s). For the tests of
  the video path, whose subject is frames, files, devices and processes, not the golden numbers."""
  size = ("--config.model.backbone.img_size=112", "--config.model.output_size=112")
  return _convert_float32(tmp_path_factory, "plain", *size, name="small")


@pytest.fixture(scope="session")
def stage1_expert1(tmp_path_factory):
  """(a stage-1 Expert 1 file: the golden file without LoRA, its tensors, its conversion)."""
  import torch

  root = tmp_path_factory.mktemp("stage1")
  tensors = {
    k: v
    for k, v in torch.load(golden("expert1.pth"), weights_only=True).items()
    if "lora_" not in k
  }
  path = root / "stage1_expert1.pth"
  torch.save(tensors, path)
  out = str(root / "converted")
  res = run_convert(
    f"--config={CONFIG}:tiny",
    f"--backbone={golden('backbone_t4.pt')}",
    f"--expert1={path}",
    f"--output={out}",
  )
  assert res.returncode == 0, res.stderr[-2000:]
  return path, tensors, out


@pytest.fixture(scope="session")
def plain_outputs(ckpt_plain, clip):
  """Every output of the plain-path model on the golden clip, with features and aux maps."""
  from flax import nnx

  from visage_jax import checkpoint as ckpt

  _, model = ckpt.load_model(ckpt_plain)
  out = nnx.jit(lambda m, x: m(x, with_aux=True, return_features=True))(model, clip)
  return {k: (v if k == "taps" else np.asarray(v)) for k, v in out.items()}


@pytest.fixture(scope="session")
def trainset(tmp_path_factory):
  """The trainer's small dataset: 6 synthetic challenge-layout videos (40 frames at 30 fps,
  72×128) prepared at 56×56, 2 of them in public_test."""
  from visage_jax.data.prepare import prepare
  from visage_jax.data.synth import write_dataset

  root = tmp_path_factory.mktemp("train")
  write_dataset(str(root / "ds"), videos=6, frames=40, size=(72, 128), seed=2)
  prepare("ntire2026", str(root / "ds"), str(root / "prep"), size=56)
  return str(root / "prep")


def free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_cli(module: str, *args: str, devices: int = 1, processes: int = 1, own_args=None):
  """`python -m MODULE ARGS` on `devices` emulated CPU devices per process, in `processes`
  processes joined through JAX_COORDINATOR_ADDRESS (gloo); the processes' CompletedProcess.
  `own_args`: {process: [arguments after ARGS]}."""
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}", JAX_NUM_PROCESSES=str(processes))
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", module, *args, *(own_args or {}).get(p, [])],
      env=dict(env, JAX_PROCESS_ID=str(p)) if processes > 1 else env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for p in range(processes)
  ]
  out = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=900)
    out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
  return out
