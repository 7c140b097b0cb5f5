"""Issue 34's GPU measurements in one process, each part within a time budget.

On whatever accelerator JAX sees, with random weights (speed does not depend on the values):

1. env: the card, CPU cores, jax's version, a bf16 matmul's TFLOP/s measured now;
2. forward: both experts and the fusion (`Predictor.forward`) at 1 × T and 2 × T frames: fused
   frames/s and the backbone's MFU;
3. video: for each `--videos` spec (a synthetic mp4, made in the background while 1-2 run),
   `visage_predict`'s per-video function end to end beside the forward alone over the same
   windows and the host alone (a fixed map; CPU ms a frame by thread role);
4. train: the Expert-2 training step for each `--attention` × `--remat` choice in stage 2, stage 1,
   and 4 accumulated micro-batches: step time, XLA's memory plan, the device's peak, MFU
   (`visage_jax.training.flops.train_step_flops` over the card's nominal bf16 peak).

A part that would not end before `--budget_s` is skipped and said so; a part that fails is
recorded with its error and the next one runs. Each record is printed and appended to
`OUT/gpu_check.jsonl` as soon as it is measured; the last line is one JSON object of them all.

    python benchmarks/gpu_check.py                          # the 6B check (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --config=tiny --videos='320x180,2,30' \
      --attention=per_head,chunked --budget_s=600            # the dry run on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from gpu_predict import plan_gib  # noqa: E402
from gpu_train import random_batch  # noqa: E402


class Budget:
  """The time left, and the parts' costs so far to guess whether the next one fits."""

  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds

  def left(self) -> float:
    return self.end - time.monotonic()


class Report:
  """Records printed and appended to OUT/gpu_check.jsonl as they come, then one summary line."""

  def __init__(self, out_dir: str):
    self.path = os.path.join(out_dir, "gpu_check.jsonl")
    self.records: list[dict] = []

  def add(self, record: dict) -> None:
    self.records.append(record)
    line = json.dumps(record)
    print(line, flush=True)
    with open(self.path, "a") as f:
      f.write(line + "\n")

  def run(self, part: str, budget: Budget, estimate_s: float, fn, **labels) -> dict | None:
    """fn() → a dict of numbers, recorded under `part` and `labels`; skipped when fewer than
    `estimate_s` seconds are left; a failure recorded by its last line."""
    head = {"part": part, **labels}
    if budget.left() < estimate_s:
      self.add({**head, "skipped": f"{budget.left():.0f} s left, about {estimate_s:.0f} s needed"})
      return None
    t0 = time.monotonic()
    try:
      result = fn()
    except Exception as e:  # one part's failure (an OOM, a kernel refused) is a result too
      traceback.print_exc()
      self.add({**head, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"})
      return None
    finally:
      gc.collect()
    record = {**head, **result, "part_s": round(time.monotonic() - t0, 1)}
    self.add(record)
    return record


def start_videos(specs: list[str], work: str) -> dict:
  """{spec: (path, process)}: each synthetic mp4 made by its own process while the model runs."""
  made = {}
  for spec in specs:
    path = os.path.join(work, f"video_{spec.replace(',', '_')}.mp4")
    code = f"import video_throughput as v; v.make_video({path!r}, {spec!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE)])}
    made[spec] = (path, subprocess.Popen([sys.executable, "-c", code], env=env))
  return made


def env_part(matmul_n: int) -> dict:
  import jax
  import jax.numpy as jnp

  from visage_jax.training import flops as perf

  dev = jax.devices()[0]
  dtype = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
  nominal = perf.nominal_peak_flops(dev)
  return {
    "device": getattr(dev, "device_kind", str(dev)),
    "devices": jax.local_device_count(),
    "cpu_cores": len(os.sched_getaffinity(0)),
    "jax": jax.__version__,
    "nominal_bf16_tflops": nominal / 1e12 if nominal else None,
    "matmul_tflops": round(perf.matmul_flops(n=matmul_n, iters=10, dtype=dtype) / 1e12, 1),
  }


def random_predictor(config: str):
  import jax
  from flax import nnx

  from configs.visage import get_config
  from visage_jax.inference import Predictor
  from visage_jax.models.visage import ViSAGE

  cfg = get_config(config)
  model = nnx.jit(lambda: ViSAGE(cfg.model, rngs=nnx.Rngs(0)))()
  predictor = Predictor(cfg, model)
  jax.block_until_ready(predictor.state)
  return predictor


def forward_part(predictor, batch: int, iters: int) -> dict:
  """Fused frames/s of `Predictor.forward` on `batch` clips (the program `visage-predict` runs)."""
  import jax

  from visage_jax.runtime import parallel
  from visage_jax.training import flops as perf

  clip = np.zeros((batch * predictor.mesh.size, *predictor.clip_shape), np.float32)
  clip = jax.device_put(clip, parallel.batch_sharding(predictor.mesh))
  t0 = time.perf_counter()
  jax.block_until_ready(predictor.forward(predictor.state, clip))
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(iters):
    out = predictor.forward(predictor.state, clip)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t0) / iters
  flops = perf.backbone_flops(predictor.config, len(clip))
  nominal = perf.nominal_peak_flops()
  frames = len(clip) * predictor.clip_shape[0]
  return {
    "frames_per_call": frames,
    "call_s": round(dt, 4),
    "fused_frames_per_s": round(frames / dt, 1),
    "backbone_mfu": round(flops / dt / nominal, 3) if nominal else None,
    "compile_and_first_s": round(first_s, 1),
  }


def video_part(predictor, path: str, process, work: str) -> dict:
  """Forward-only, end to end and host-only frames/s on one video (`video_throughput`)."""
  import video_throughput as vt

  if process.wait() != 0:
    raise RuntimeError(f"making {path} failed (exit {process.returncode})")
  forward = vt.forward_only(predictor, path, batch_size=1)
  e2e = vt.end_to_end(predictor, path, 1, os.path.join(work, "e2e"))
  with vt.ThreadCPU() as cpu:
    host = vt.end_to_end(vt.FixedMapModel(predictor), path, 1, os.path.join(work, "host"))
  host["cpu_ms_per_frame"] = cpu.ms_per_frame(host["frames"])
  for r in (forward, e2e, host):
    r["fps"] = round(r["fps"], 2)
  ratio = round(e2e["fps"] / forward["fps"], 3)
  return {"forward_only": forward, "end_to_end": e2e, "host_only": host, "ratio": ratio}


class TrainBench:
  """Expert 2's training step under several settings, re-using one stage's weights: a new
  attention or remat choice changes the program (the graph), not the weights."""

  def __init__(self, config: str):
    from visage_jax.runtime import parallel

    self.config = config
    self.mesh = parallel.make_mesh()
    self.stage = None
    self.state = self.frozen = None

  def settings(self, stage: int, attention: str, remat: str, accum: int):
    from configs.visage import get_config

    cfg = get_config(self.config)
    cfg.model.backbone.attention_impl = attention
    t = cfg.train
    t.stage, t.expert, t.remat_policy, t.grad_accum_steps = stage, 2, remat, accum
    t.batch_size = self.mesh.size * accum  # one clip per device and micro-batch
    return cfg

  def _weights(self, cfg):
    """(graphdef, tx) for `cfg`, with this stage's state and frozen weights on the devices."""
    import jax
    from flax import nnx

    from visage_jax.runtime import parallel
    from visage_jax.training import step as train_step

    tx = train_step.make_optimizer(cfg)
    if self.stage != cfg.train.stage:
      self.state = self.frozen = None
      gc.collect()
      model = nnx.jit(lambda: train_step.init_model(cfg))()
      graphdef, trainable, stats, self.frozen = train_step.split(model, cfg)
      self.state = train_step.new_state(cfg, tx, trainable, stats)
      self.stage = cfg.train.stage
      del model, trainable, stats
    abstract = nnx.eval_shape(lambda: train_step.init_model(cfg))
    graphdef = train_step.split(abstract, cfg)[0]
    _, shardings = train_step.jit_step(graphdef, cfg, tx, self.mesh, self.state, self.frozen)
    self.state, self.frozen = parallel.put((self.state, self.frozen), shardings)
    jax.block_until_ready(self.state)
    return graphdef, tx

  def measure(self, stage: int, attention: str, remat: str, accum: int, iters: int) -> dict:
    import jax

    from visage_jax.runtime import parallel
    from visage_jax.training import flops as perf
    from visage_jax.training import step as train_step

    cfg = self.settings(stage, attention, remat, accum)
    t0 = time.perf_counter()
    graphdef, tx = self._weights(cfg)
    init_s = time.perf_counter() - t0
    step, _ = train_step.jit_step(graphdef, cfg, tx, self.mesh, self.state, self.frozen)
    batch = jax.device_put(random_batch(cfg), parallel.batch_sharding(self.mesh))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step.lower(self.state, self.frozen, batch, key).compile()
    compile_s = time.perf_counter() - t0
    self.state, parts = compiled(self.state, self.frozen, batch, key)
    jax.block_until_ready(parts["total"])
    t0 = time.perf_counter()
    for i in range(iters):
      self.state, parts = compiled(self.state, self.frozen, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(parts["total"])
    dt = (time.perf_counter() - t0) / iters
    model_cfg = train_step.training_model_config(cfg)
    flops = perf.train_step_flops(cfg, cfg.train.batch_size)
    nominal = perf.nominal_peak_flops()
    return {
      "remat_resolved": model_cfg.backbone.remat_policy,
      "global_batch": cfg.train.batch_size,
      "frames": cfg.model.backbone.num_frames,
      "step_s": round(dt, 4),
      "model_tflops_per_step": round(flops / 1e12, 2),
      "mfu": round(flops / dt / (nominal * self.mesh.size), 3) if nominal else None,
      "xla_plan_gib": plan_gib(compiled),
      "device_peak_gib_so_far": device_peak_gib(),
      "weights_s": round(init_s, 1),
      "compile_s": round(compile_s, 1),
      "loss": float(parts["total"]),
    }


def device_peak_gib() -> float | None:
  import jax

  stats = jax.local_devices()[0].memory_stats()
  return round(stats["peak_bytes_in_use"] / 2**30, 2) if stats else None


def train_plan(attentions: list[str], remats: list[str]) -> list[dict]:
  """Stage 2 under the first attention with every remat choice, accumulation 4, the other
  attentions, then stage 1 (new weights: no adapters): what matters most first, should the
  budget run out, and one stage's weights at a time."""
  first = attentions[0]
  plan = [dict(stage=2, attention=first, remat=r, accum=1) for r in remats]
  plan.append(dict(stage=2, attention=first, remat=remats[0], accum=4))
  plan += [dict(stage=2, attention=a, remat=r, accum=1) for a in attentions[1:] for r in remats]
  plan.append(dict(stage=1, attention=first, remat="auto", accum=1))
  return plan


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="6b", help="preset with random weights: tiny, 1b, 6b")
  ap.add_argument("--videos", default="1920x1080,20,30;1280x720,10,30", help="';' WxH,s,fps")
  ap.add_argument("--attention", default="auto,chunked", help="stage-2 attention choices")
  ap.add_argument("--remat", default="auto,full", help="stage-2 remat choices")
  ap.add_argument("--budget_s", type=float, default=480, help="seconds for all the parts")
  ap.add_argument("--iters", type=int, default=3, help="timed training steps per setting")
  ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="JSONL folder")
  args = ap.parse_args()

  budget = Budget(args.budget_s)
  os.makedirs(args.out, exist_ok=True)
  report = Report(args.out)
  work = tempfile.mkdtemp(prefix="gpu_check_")
  videos = start_videos([s for s in args.videos.split(";") if s], work)

  import jax

  on_cpu = jax.default_backend() == "cpu"
  report.run("env", budget, 0, lambda: env_part(1024 if on_cpu else 8192))
  predictor = [None]

  def build():
    predictor[0] = random_predictor(args.config)
    return {"config": args.config}

  if report.run("weights", budget, 30, build):
    for batch, iters in ((1, 6), (2, 3)):
      part = lambda b=batch, n=iters: forward_part(predictor[0], b, n)
      report.run("forward", budget, 60, part, batch=batch)
    for spec, (path, process) in videos.items():
      part = lambda p=path, proc=process: video_part(predictor[0], p, proc, work)
      report.run("video", budget, 60, part, video=spec)
  predictor[0] = None
  gc.collect()

  bench, cost = TrainBench(args.config), 100.0
  for choice in train_plan(args.attention.split(","), args.remat.split(",")):
    fresh = choice["stage"] != bench.stage
    part = lambda c=choice: bench.measure(**c, iters=args.iters)
    record = report.run("train", budget, cost * (1.5 if fresh else 1.0), part, **choice)
    if record:
      cost = record["part_s"] - (record["weights_s"] if fresh else 0)
  print(json.dumps({"gpu_check": report.records, "left_s": round(budget.left())}), flush=True)


if __name__ == "__main__":
  main()
