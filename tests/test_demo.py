"""visage-demo end to end: synthetic data, the sharded trainer on emulated devices, export,
jitted evaluation, prediction, and its outputs (the README's first command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # whole commands and programs, end to end


def _run(out, *extra):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "visage_jax.cli.demo", f"--output={out}", *extra]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_demo_trains_evaluates_predicts_and_beats_the_centre_prior(tmp_path):
  from PIL import Image

  from visage_jax.data.video import open_video

  out = str(tmp_path / "demo")
  res = _run(out, "--steps1=40", "--steps2=16")  # shorter than the default run
  assert res.returncode == 0, res.stderr[-3000:]
  assert "2 cpu devices" in res.stdout
  m = json.load(open(os.path.join(out, "metrics.json")))
  for who in ("model", "center_prior"):
    assert set(m[who]) >= {"cc", "sim", "nss", "auc_judd"}
    assert all(np.isfinite(v) for v in m[who].values())
  assert m["model"]["cc"] > m["center_prior"]["cc"] + 0.2, m
  assert m["model"]["nss"] > m["center_prior"]["nss"] + 0.5, m
  # the evaluation's own report agrees with what metrics.json took from it
  ev = json.load(open(os.path.join(out, "eval", "metrics.json")))
  assert ev["overall"]["fused"]["ntire2026"]["cc"]["challenge"] == m["model"]["cc"]
  held_out = json.load(open(os.path.join(out, "data", "TrainTestSplit.json")))["public_test"]
  for name in (v[: -len(".mp4")] for v in held_out):
    maps = sorted(os.listdir(os.path.join(out, "predictions", name)))
    assert len(maps) == 90 and maps[0] == "eyeMap_00001.png" and maps[-1] == "eyeMap_00090.png"
  overlay = open_video(os.path.join(out, "overlay.mp4"))
  assert (overlay.num_frames, overlay.height, overlay.width) == (90, 72, 128)
  sheet = Image.open(os.path.join(out, "contact_sheet.png"))
  assert sheet.format == "PNG" and sheet.size[0] > 3 * 128
  # an unrelated folder is never replaced
  other = tmp_path / "mine"
  other.mkdir()
  (other / "thesis.tex").write_text("keep me")
  res = _run(str(other))
  assert res.returncode != 0 and "not an earlier demo" in res.stderr
  assert (other / "thesis.tex").read_text() == "keep me"
