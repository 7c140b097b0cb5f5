"""visage-train resumes exactly: kill -9 mid-run, the same command again, the same final weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

from visage_jax.data.prepare import prepare
from visage_jax.data.synth import write_dataset

SMALL = [
  "--config.model.backbone.img_size=56",
  "--config.model.output_size=56",
  "--config.model.backbone.num_frames=4",
  "--config.model.backbone.depth=4",
  "--config.model.backbone.taps=(0,1,2,3)",
  "--config.train.batch_size=2",
  "--config.train.num_steps=8",
  "--config.train.checkpoint_every=2",
  "--config.train.log_every=1",
  "--config.train.expert=1",
  "--config.data.val_split=public_test",
  "--config.train.eval_every=4",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  write_dataset(str(root / "ds"), videos=6, frames=40, size=(72, 128), seed=2)
  prepare("ntire2026", str(root / "ds"), str(root / "prep"), size=56)
  return str(root / "prep")


def _cmd(workdir, prepared):
  return [
    sys.executable,
    "-m",
    "visage_jax.cli.train",
    f"--config={os.path.join(REPO, 'configs', 'visage.py')}:tiny",
    f"--workdir={workdir}",
    f"--config.data.dir={prepared}",
    *SMALL,
  ]


def _env():
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def _final(workdir):
  return dict(np.load(os.path.join(workdir, "trainable_last.npz")))


def test_kill9_then_rerun_equals_uninterrupted(prepared, tmp_path):
  ref = str(tmp_path / "ref")
  res = subprocess.run(_cmd(ref, prepared), env=_env(), capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "step 8:" in res.stdout
  import json

  lines = [json.loads(x) for x in open(os.path.join(ref, "validation.jsonl"))]
  assert [x["step"] for x in lines] == [4, 8]
  for x in lines:
    assert {"cc", "sim", "nss", "auc_judd"} <= set(x) and -1 <= x["cc"] <= 1

  run = str(tmp_path / "run")
  proc = subprocess.Popen(
    _cmd(run, prepared), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  deadline = time.time() + 600
  while not os.path.isdir(os.path.join(run, "checkpoints", "4")) and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(run, "trainable_last.npz"))  # it did not finish
  res = subprocess.run(_cmd(run, prepared), env=_env(), capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resumed from step" in res.stdout
  a, b = _final(ref), _final(run)
  assert a.keys() == b.keys()
  for k in a:
    err = float(np.max(np.abs(a[k] - b[k])))
    assert err <= 1e-6, (k, err)


def test_sigterm_saves_and_exits(prepared, tmp_path):
  run = str(tmp_path / "term")
  proc = subprocess.Popen(
    _cmd(run, prepared), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 600
  while not os.path.isdir(os.path.join(run, "checkpoints", "2")) and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  if "SIGTERM: saved step" in out:  # else it had already finished all 8 steps
    step = int(out.split("SIGTERM: saved step ")[1].split()[0])
    assert os.path.isdir(os.path.join(run, "checkpoints", str(step)))
