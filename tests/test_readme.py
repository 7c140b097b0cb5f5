"""The README's Python example runs as written, on a converted checkpoint and a short video."""

from __future__ import annotations

import os
import re

import pytest
from conftest import REPO

pytestmark = pytest.mark.xdist_group("predict")  # shares the small conversion's worker


def python_example() -> str:
  readme = open(os.path.join(REPO, "README.md")).read()
  section = readme.split("\n## Python\n", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_example_runs(ckpt_small, tmp_path, capsys):
  from visage_jax.data.encode import write_mp4
  from visage_jax.data.synth import make_video

  video = str(tmp_path / "my_video.mp4")
  write_mp4(video, make_video(2, 7, (40, 64))[0], 25)
  code = python_example()
  assert '"checkpoints/visage-6b"' in code and '"my_video.mp4"' in code
  code = code.replace('"checkpoints/visage-6b"', repr(ckpt_small))
  exec(compile(code.replace('"my_video.mp4"', repr(video)), "README.md", "exec"), {})
  lines = capsys.readouterr().out.splitlines()
  assert [int(line.split()[0]) for line in lines[:7]] == list(range(7))  # a line a frame
  assert -1.0 <= float(lines[7]) <= 1.0 and len(lines) == 8  # the CC
