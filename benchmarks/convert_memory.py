"""Peak memory of `visage-convert` on full-size 6B checkpoints.

Writes synthetic checkpoints with the real key lists and shapes (`tests/golden/keys_*.txt`):
the backbone in bfloat16 as `{"module": {...}}` (about 12 GB), the two stage-2 expert files as the
original saves them; then runs `visage-convert --config=configs/visage.py:6b` in a child process
and reports its peak resident memory (ru_maxrss) and wall time. Needs about 25 GB of free disk.

    python benchmarks/convert_memory.py [--workdir=/tmp/visage-convert-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "tests", "golden")  # the real 6B files' key lists


def read_keys(name):
  out = []
  for line in open(os.path.join(SPEC, name)):
    if line.startswith("#") or not line.strip():
      continue
    m = re.match(r"^(\S+) \(([\d, ]*)\) (\S+)$", line.strip())
    shape = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
    out.append((m.group(1), shape, m.group(3)))
  return out


def write_synthetic(workdir):
  import torch

  paths = {}
  t0 = time.time()
  sd = {}
  for key, shape, _ in read_keys("keys_6b_backbone.txt"):
    sd[key] = torch.full(shape, 0.01, dtype=torch.bfloat16)
  for junk in ("text_encoder.embeddings.word_embeddings.weight", "vision_proj.weight"):
    sd[junk] = torch.zeros(8, 8)
  paths["backbone"] = os.path.join(workdir, "backbone_6b_bf16.pt")
  torch.save({"module": sd}, paths["backbone"])
  del sd
  for name in ("expert1", "expert2"):
    sd = {}
    for key, shape, dtype in read_keys(f"keys_{name}_6b.txt"):
      dt = torch.int64 if dtype == "int64" else torch.float32
      sd[key] = (
        torch.full(shape, 0.01, dtype=dt) if dt != torch.int64 else torch.zeros(shape, dtype=dt)
      )
    paths[name] = os.path.join(workdir, f"{name}_6b.pth")
    torch.save(sd, paths[name])
  sizes = {k: os.path.getsize(v) / 2**30 for k, v in paths.items()}
  print(
    f"wrote synthetic checkpoints in {time.time() - t0:.0f} s: "
    + ", ".join(f"{k} {v:.2f} GiB" for k, v in sizes.items()),
    flush=True,
  )
  return paths, sizes


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="/tmp/visage-convert-bench")
  ap.add_argument("--keep", action="store_true")
  args = ap.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  paths, sizes = write_synthetic(args.workdir)
  out = os.path.join(args.workdir, "converted")
  shutil.rmtree(out, ignore_errors=True)
  cmd = [
    sys.executable,
    "-m",
    "visage_jax.cli.convert",
    f"--config={os.path.join(REPO, 'configs', 'visage.py')}:6b",
    f"--backbone={paths['backbone']}",
    f"--expert1={paths['expert1']}",
    f"--expert2={paths['expert2']}",
    f"--output={out}",
  ]
  t0 = time.time()
  res = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  wall = time.time() - t0
  peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  out_gib = (
    sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) / 2**30
    if os.path.isdir(out)
    else 0.0
  )
  result = {
    "job": "convert-6b",
    "returncode": res.returncode,
    "source_gib": round(sum(sizes.values()), 2),
    "output_gib": round(out_gib, 2),
    "peak_rss_gib": round(peak_gib, 2),
    "wall_s": round(wall, 1),
  }
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)
  print(json.dumps(result))
  sys.exit(res.returncode)


if __name__ == "__main__":
  main()
