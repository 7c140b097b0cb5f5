"""Peak memory of `visage-export --format=pytorch` on a full-size 6B checkpoint.

Writes the synthetic 6B checkpoints of `convert_memory.py` (the real key lists and shapes),
converts them, then runs the export in a child process per job and reports its peak resident
memory (ru_maxrss) against the issue's bound: at most the model's arrays plus 1.25 × the bytes
exported. Each exported file's names and shapes are checked against `tests/golden/keys_*.txt`.
Needs about 50 GB of free disk with --full_state_dict (25 GB without).

    python benchmarks/export_memory.py [--workdir=/tmp/visage-export-bench] [--full_state_dict]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_memory import REPO, read_keys, write_synthetic  # noqa: E402

_MEASURE = (
  "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
  "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def _env():
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")


def convert(paths, out):
  cmd = [sys.executable, "-m", "visage_jax.cli.convert", f"--config={REPO}/configs/visage.py:6b"]
  cmd += [f"--backbone={paths['backbone']}", f"--output={out}"]
  cmd += [f"--{e}={paths[e]}" for e in ("expert1", "expert2")]
  subprocess.run(cmd, cwd=REPO, env=_env(), check=True)


def model_bytes(converted) -> int:
  import numpy as np

  from visage_jax import checkpoint as ckpt

  cfg = ckpt.read_config(converted)
  return sum(
    int(np.prod(s.shape))
    * np.dtype(cfg.model.param_dtype if p[0] == "backbone" else s.dtype).itemsize
    if p[0] == "backbone" and p[-1] not in ("lora_a", "lora_b")
    else int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
    for p, s in ckpt.abstract_flat_state(cfg.model).items()
  )


def check_keys(path, spec_name) -> str:
  import torch

  sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sd.items()}
  want = {k: (s, d) for k, s, d in read_keys(spec_name)}
  if set(ours) != set(want):
    return f"{len(set(ours) ^ set(want))} names differ from {spec_name}"
  shapes = [k for k in want if ours[k][0] != want[k][0]]
  dtypes = [k for k in want if ours[k][1] != want[k][1]]
  if shapes:
    return f"{len(shapes)} shapes differ from {spec_name} (first {shapes[0]})"
  return f"names and shapes as {spec_name}" + (f"; {len(dtypes)} dtypes differ" if dtypes else "")


def export(converted, out, full: bool) -> dict:
  cmd = [sys.executable, "-c", "from visage_jax.cli.export import run; run()"]
  cmd += ["--format=pytorch", f"--checkpoint={converted}", f"--output={out}"]
  cmd += ["--full_state_dict"] if full else []
  t0 = time.time()
  res = subprocess.run(
    [sys.executable, "-c", _MEASURE, *cmd], cwd=REPO, env=_env(), capture_output=True, text=True
  )
  if res.returncode != 0:
    raise SystemExit(res.stderr[-3000:])
  peak = int(res.stdout.strip().splitlines()[-1]) * 1024
  files = {f: os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f != "export.json"}
  checks = {
    f: check_keys(os.path.join(out, f), f"keys_{os.path.splitext(f)[0]}_6b.txt") for f in files
  }
  return {"wall_s": round(time.time() - t0, 1), "peak": peak, "files": files, "checks": checks}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="/tmp/visage-export-bench")
  ap.add_argument("--full_state_dict", action="store_true")
  ap.add_argument("--keep", action="store_true")
  args = ap.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  converted = os.path.join(args.workdir, "converted")
  if not os.path.isdir(converted):
    paths, _ = write_synthetic(args.workdir)
    convert(paths, converted)
    for p in paths.values():
      os.remove(p)
  model = model_bytes(converted)
  results = []
  for full in [False, True] if args.full_state_dict else [False]:
    out = os.path.join(args.workdir, "full" if full else "experts")
    shutil.rmtree(out, ignore_errors=True)
    r = export(converted, out, full)
    exported = sum(r["files"].values())
    bound = model + 1.25 * exported
    results.append(
      {
        "job": "export-6b" + ("-full" if full else ""),
        "model_gib": round(model / 2**30, 2),
        "exported_gib": round(exported / 2**30, 2),
        "peak_rss_gib": round(r["peak"] / 2**30, 2),
        "bound_gib (model + 1.25 x exported)": round(bound / 2**30, 2),
        "within_bound": r["peak"] <= bound,
        "wall_s": r["wall_s"],
        "keys": r["checks"],
      }
    )
    print(json.dumps(results[-1]), flush=True)
    shutil.rmtree(out, ignore_errors=True)
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)
  sys.exit(0 if all(r["within_bound"] for r in results) else 1)


if __name__ == "__main__":
  main()
