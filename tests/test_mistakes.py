"""Every command's mistakes, from one table: each row runs a command as its console script does
(`python -c "from MODULE import ENTRY; ENTRY()" ARGS`) in a folder of fixtures and expects one
line on stderr, `PROG: error: ` and the row's words, the row's exit code, nothing created or
changed in that folder, and all of it in under 5 seconds. A new command adds rows, not code.

Fixtures in the folder: `a_file` (text), `a_dir/` (empty), `clip.mp4` (3 frames), `videos/`
(holding `clip2.mp4`), `ckpt/config.json` (a checkpoint's config, no weights), `junk.pt` (random
bytes). `{presets}` is configs/visage.py; a row with `torch=False` runs as if PyTorch were not
installed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

PRESETS = os.path.join(REPO, "configs", "visage.py")
APART = "its outputs could overwrite what it reads; choose an output folder apart from the inputs"
HELP = "(--help lists the flags)"
ONE_OR_MORE = "must be one or more of pngs, video, overlay, comma-separated"
EXTRA = "which visage-jax installs with its [convert] extra: pip install 'visage-jax[convert]'"
CONVERT = ("visage_jax.cli.convert", "run", "visage-convert")
EXPORT = ("visage_jax.cli.export", "run", "visage-export")
TRAIN = ("visage_jax.cli.train", "run_cli", "visage-train")
EVAL = ("visage_jax.cli.evaluate", "run", "visage-eval")
PREDICT = ("visage_jax.cli.predict", "run", "visage-predict")
PREPARE = ("visage_jax.cli.prepare", "run", "visage-prepare")
SYNTH = ("visage_jax.cli.synth", "run", "visage-synth")
CHECK = ("visage_jax.cli.check_submission", "run", "visage-check-submission")
DEMO = ("visage_jax.cli.demo", "run", "visage-demo")
TINY = "--config={presets}:tiny"
CONVERT_ARGS = (TINY, "--backbone=junk.pt")

# (command, arguments, the line's words after "PROG: error: " (or its end, after "…"), exit
# code[, torch installed])
MISTAKES = [
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=out", "--config.model.backbone.img_sise=112"],
    "--config.model.backbone.img_sise: no such field; did you mean "
    "--config.model.backbone.img_size?",
    2,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=out", "--config.model.backbone.num_frames=0"],
    "--config.model.backbone.num_frames=0: must be at least 1",
    2,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=out", "--config.model.backbone.img_size=-112"],
    "--config.model.backbone.img_size=-112: must be at least 1",
    2,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=out"],
    f"reading the original's checkpoints needs torch, {EXTRA}",
    2,
    False,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=a_dir"],
    "--output=a_dir already exists; remove it or choose another --output",
    2,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=a_file/out"],
    "--output=a_file/out: cannot create it: {tmp}/a_file is a file",
    2,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=/proc/visage"],
    "--output=/proc/visage: cannot create it in /proc",
    2,
  ),
  (
    CONVERT,
    [*CONVERT_ARGS, "--output=out"],
    "junk.pt: cannot read the checkpoint: not a PyTorch checkpoint",
    2,
  ),
  (
    EXPORT,
    ["--workdir=w", "--full_state_dict", "--output=out"],
    "--full_state_dict is for --format=pytorch or safetensors",
    2,
  ),
  (
    EXPORT,
    ["--format=pytorch", "--checkpoint=ckpt", "--output=out"],
    f"--format=pytorch needs torch, {EXTRA}",
    2,
    False,
  ),
  (
    EXPORT,
    ["--format=safetensors", "--checkpoint=ckpt", "--output=out"],
    f"--format=safetensors needs torch, {EXTRA}",
    2,
    False,
  ),
  (EXPORT, ["--workdir=w", "--output=a_file"], "--output=a_file already exists", 2),
  (
    EXPORT,
    ["--workdir=w", "--output=/proc/visage"],
    "--output=/proc/visage: cannot create it in /proc",
    2,
  ),
  (EXPORT, ["--workdir=w", "--output=w"], "--output=w is --workdir=w: " + APART, 2),
  (SYNTH, ["--output=/proc/visage"], "--output=/proc/visage: cannot create it in /proc", 2),
  (
    SYNTH,
    ["--output=a_file/data"],
    "--output=a_file/data: cannot create it: {tmp}/a_file is a file",
    2,
  ),
  (SYNTH, ["--output=a_dir"], "--output=a_dir already exists", 2),
  (SYNTH, ["--output=data", "--size=big"], "--size must look like 144x256, got 'big'", 2),
  (SYNTH, ["--output=data", "--videos=1"], "--videos must be at least 2", 2),
  (
    TRAIN,
    [TINY, "--workdir=w", "--config.data.dir=d", "--config.train.bach_size=2"],
    "--config.train.bach_size: no such field; did you mean --config.train.batch_size?",
    2,
  ),
  (
    TRAIN,
    [TINY, "--workdir=w", "--config.data.dir=d", "--config.train.lr_decoder_stage1=-1"],
    "train.lr_decoder_stage1=-1.0 must be at least 0.0",
    2,
  ),
  (
    TRAIN,
    [TINY, "--workdir=w", "--config.data.dir=d", "--config.model.backbone.img_size=0"],
    "model.backbone.img_size=0: must be at least 1",
    2,
  ),
  (
    TRAIN,
    [TINY, "--workdir=a_file", "--config.data.dir=d"],
    "--workdir=a_file is an existing file, not a folder",
    2,
  ),
  (
    EVAL,
    ["--checkpoint=a_file", "--data=a_dir", "--output=out"],
    "a_file: a file, not a checkpoint folder",
    2,
  ),
  (
    EVAL,
    ["--checkpoint=ckpt", "--data=a_dir", "--output=a_dir/out"],
    "--output=a_dir/out lies inside --data=a_dir: " + APART,
    2,
  ),
  (
    EVAL,
    ["--checkpoint=ckpt", "--data=a_dir", "--output=out", "--batch_size=0"],
    "flag --batch_size=0: 0 is not",
    2,
  ),
  (
    PREDICT,
    ["--checkpoint=ckpt", "--input=nosuch.mp4", "--output=out"],
    "--input=nosuch.mp4: no such file or folder",
    2,
  ),
  (PREDICT, ["--checkpoint=ckpt", "--input=a_dir", "--output=out"], "no videos in a_dir", 2),
  (
    PREDICT,
    ["--checkpoint=a_file", "--input=clip.mp4", "--output=out"],
    "a_file: a file, not a checkpoint folder",
    2,
  ),
  (
    PREDICT,
    ["--checkpoint=ckpt", "--input=videos", "--output=videos/out"],
    "--output=videos/out lies inside --input=videos: " + APART,
    2,
  ),
  (
    PREDICT,
    ["--checkpoint=ckpt", "--input=clip.mp4", "--output=."],
    "--output=. holds --input=clip.mp4: " + APART,
    2,
  ),
  (
    PREPARE,
    ["--layout=ntire2026", "--root=a_dir", "--output=a_dir/prepared"],
    "--output=a_dir/prepared lies inside --root=a_dir: " + APART,
    2,
  ),
  (
    PREPARE,
    ["--layout=ntire2026", "--root=a_dir", "--output=a_file"],
    "--output=a_file is an existing file, not a folder",
    2,
  ),
  (CHECK, ["--predictions=nosuch", "--videos=a_dir"], "--predictions=nosuch does not exist", 2),
  (CHECK, ["--predictions=a_dir", "--videos=a_file"], "--videos=a_file is a file, not a folder", 2),
  (DEMO, ["--output=a_dir"], "{tmp}/a_dir exists and is not an earlier demo", 2),
  (DEMO, ["--output=/proc/visage"], "--output=/proc/visage: cannot create it in /proc", 2),
  (DEMO, ["--output=a_file"], "--output={tmp}/a_file is an existing file, not a folder", 2),
  # moved from test_export.py, which matched the line's end (words starting with …)
  (PREDICT, ["--bogus=1"], f"…flag 'bogus' {HELP}", 2),
  (
    EVAL,
    ["--batch_size=two"],
    f"…--batch_size=two: invalid literal for int() with base 10: 'two' {HELP}",
    2,
  ),
  (TRAIN, ["--workdir=w"], f"…must have a value other than None. {HELP}", 2),
  (PREDICT, ["--source_fps=0"], f"…must be > 0 {HELP}", 2),
  (PREDICT, ["--outputs=pngs,mp4"], f"…{ONE_OR_MORE} {HELP}", 2),
  (PREDICT, ["--outputs="], f"…{ONE_OR_MORE} {HELP}", 2),
  (
    PREDICT,
    ["--outputs=video", "--save_experts"],
    f"…--save_experts writes each expert's PNGs: --outputs must include pngs {HELP}",
    2,
  ),
  (
    PREDICT,
    ["--checkpoint=c", "--input=a_file", "--input=clips/*.mp4", "--output=o"],
    "…--input=clips/*.mp4: no such file or folder",
    2,
  ),
  (PREPARE, ["--fps=-5"], f"…must be > 0 {HELP}", 2),
  (EVAL, ["--dtype=bf16"], f"…--dtype=bf16: value should be one of <float32|bfloat16> {HELP}", 2),
  (EVAL, ["--sauc_frames=0"], f"…--sauc_frames=0: 0 is not a positive integer {HELP}", 2),
  (
    TRAIN,
    [f"--config={PRESETS}:7b", "--workdir=w", "--config.data.dir=d"],
    f"…--config={PRESETS}:7b: unknown preset '7b'; choose one of ('6b', '1b', 'tiny') {HELP}",
    2,
  ),
  (
    CONVERT,
    ["--config=configs/visage.py:tiny", "--backbone=b.pt", "--output=c"],
    "…--config: cannot load the config file: [Errno 2] No such file or directory: "
    f"'configs/visage.py'; the presets are in {PRESETS}",
    2,
  ),
  (
    PREPARE,
    ["--layout=ntire2026", "--root=d", "--output=a_file"],
    "…--output=a_file is an existing file, not a folder",
    2,
  ),
  (
    EVAL,
    ["--checkpoint=c", "--data=d", "--output=d/out"],
    "…--output=d/out lies inside --data=d: " + APART,
    2,
  ),
  (
    PREPARE,
    ["--layout=ntire2026", "--root=.", "--output=prepared"],
    "…--output=prepared lies inside --root=.: " + APART,
    2,
  ),
  (
    EXPORT,
    ["--format=pytorch", "--checkpoint=..", "--output=new"],
    "…--output=new lies inside --checkpoint=..: " + APART,
    2,
  ),
  (
    SYNTH,
    ["--output=s", "--frames=0"],
    "…--frames and --size must be ≥ 1 and --fps > 0, got 0, (144, 256), 30.0",
    2,
  ),
]


def _fixtures(folder) -> None:
  from visage_jax.data.encode import write_mp4

  (folder / "a_file").write_text("not a video, not a checkpoint\n")
  (folder / "a_dir").mkdir()
  frames = np.random.default_rng(0).integers(0, 255, (3, 16, 24, 3), dtype=np.uint8)
  write_mp4(str(folder / "clip.mp4"), frames, 25)
  (folder / "videos").mkdir()
  write_mp4(str(folder / "videos" / "clip2.mp4"), frames, 25)
  (folder / "ckpt").mkdir()
  (folder / "ckpt" / "config.json").write_text('{"model": {}}\n')
  (folder / "junk.pt").write_bytes(np.random.default_rng(1).bytes(3000))


def _snapshot(folder) -> dict:
  return {
    os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
    for d, dirs, files in os.walk(folder)
    for f in files + dirs
  }


def _id(row) -> str:
  (_, _, prog), args, *_ = row
  return f"{prog} {' '.join(a for a in args if not a.startswith('--config=')).replace('/', '|')}"


@pytest.mark.parametrize("row", MISTAKES, ids=[_id(r) for r in MISTAKES])
def test_a_mistake_is_one_line_and_leaves_nothing(row, tmp_path):
  (module, entry, prog), args, words, code, *torch = row
  _fixtures(tmp_path)
  before = _snapshot(tmp_path)
  block = "import sys; sys.modules['torch'] = None; " if torch == [False] else ""
  argv = [a.format(presets=PRESETS, tmp=tmp_path) for a in args]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  t0 = time.perf_counter()
  res = subprocess.run(
    [sys.executable, "-c", f"{block}from {module} import {entry}; {entry}()", *argv],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env=env,
    timeout=60,
  )
  seconds = time.perf_counter() - t0
  assert (res.returncode, res.stderr.count("\n")) == (code, 1), res.stderr[-2000:]
  line = res.stderr.rstrip("\n")
  assert line.startswith(f"{prog}: error: "), line
  if words.startswith("…"):  # the line's end
    assert line.endswith(words[1:].format(tmp=tmp_path)), (words, line)
  else:
    assert line.startswith(f"{prog}: error: {words.format(tmp=tmp_path)}"), (words, line)
  assert _snapshot(tmp_path) == before, "the mistake created or changed files"
  assert seconds < 5, f"{seconds:.1f} s"


def test_the_table_covers_every_command():
  import tomllib

  scripts = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]["scripts"]
  covered = {prog for (_, _, prog), *_ in MISTAKES}
  assert covered == set(scripts), set(scripts) ^ covered
