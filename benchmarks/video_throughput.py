"""End-to-end video throughput of `visage-predict` against the model alone, in one run.

For one video and one model (a checkpoint, or a config preset with random weights: speed does not
depend on the values), on whatever devices JAX sees:

- forward-only: the jitted forward over exactly the windows `visage-predict` runs (decoded
  beforehand, outside the timing), in source frames per second;
- end to end: `visage_jax.inference.predict.write_video_outputs`, the function `visage-predict`
  runs for a video (decode, forward, PNGs at source size, maps mp4, overlay mp4), after compiling;
- host only: the same with the model replaced by a fixed map (decode + write), with the CPU
  milliseconds a frame of each thread role (`ThreadCPU`): a role of one thread is a serial chain
  that bounds the frames/s on any number of cores;
- optionally (`--eval_data`) `visage-eval`'s `evaluate_dataset` on a challenge-layout set;
- optionally (`--rss`) the peak resident memory of a `visage-predict` process on the video.

    python benchmarks/video_throughput.py --checkpoint=DIR --make_video=1280x720,15,25 \
      [--rss='1280x720,15,25;1280x720,60,25'] [--eval_data=ROOT]
    python benchmarks/video_throughput.py --checkpoint=DIR --video=clip.mp4

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def make_video(path: str, spec: str) -> None:
  """A synthetic mp4, WxH,seconds,fps: a drifting texture with moving bright blobs, written frame
  by frame (no whole video in memory)."""
  from visage_jax.data.encode import Mp4Encoder

  size, seconds, fps = spec.split(",")
  w, h = (int(x) for x in size.split("x"))
  n = int(round(float(seconds) * float(fps)))
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  base = (60 + 40 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 23.0)[..., None]) * np.asarray(
    [1.0, 0.8, 0.6], np.float32
  )
  centres = rng.uniform(0.2, 0.8, (3, 2)) * (h, w)
  speeds = rng.uniform(-4, 4, (3, 2))
  encoder = Mp4Encoder(path, float(fps), h, w, crf=18, preset="veryfast")
  for i in range(n):
    frame = np.roll(base, i, axis=1).copy()
    for c, v in zip(centres, speeds):
      cy, cx = (c + v * i) % (h, w)
      y0, y1 = int(max(cy - h / 12, 0)), int(min(cy + h / 12, h))
      x0, x1 = int(max(cx - h / 12, 0)), int(min(cx + h / 12, w))
      frame[y0:y1, x0:x1] = (230, 210, 60)
    encoder.add(np.clip(frame, 0, 255).astype(np.uint8))
  encoder.close()


def load_predictor(args):
  from visage_jax.inference import Predictor

  if args.checkpoint:
    return Predictor.load(args.checkpoint, **({"dtype": args.dtype} if args.dtype else {}))
  from flax import nnx

  from configs.visage import get_config
  from visage_jax.models.visage import ViSAGE

  cfg = get_config(args.config)
  if args.dtype:
    cfg.model.dtype = args.dtype
  model = nnx.jit(lambda: ViSAGE(cfg.model, rngs=nnx.Rngs(0)))()
  return Predictor(cfg, model)


class FixedMapModel:
  """Stands in for a `Predictor` in the host-only run: every window gets the same smooth map,
  held on the devices as the model's are (so the 8-bit levels are made there, as in a real
  run, and only the model's work is left out)."""

  def __init__(self, predictor):
    self.config, self.mesh, self.expert_names = (
      predictor.config,
      predictor.mesh,
      predictor.expert_names,
    )
    s = predictor.config.model.output_size  # the maps the model gives
    yy, xx = np.mgrid[0:s, 0:s] / s
    self._map = np.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) / 0.05).astype(np.float32)
    self._placed: dict = {}
    self.state = None

  def forward(self, state, clip):
    import jax

    from visage_jax.runtime import parallel

    shape = clip.shape[:2] + self._map.shape
    if shape not in self._placed:
      maps = np.ascontiguousarray(np.broadcast_to(self._map, shape))
      self._placed[shape] = jax.device_put(maps, parallel.batch_sharding(self.mesh))
    return {k: self._placed[shape] for k in (*self.expert_names, "fused")}


def forward_only(predictor, video_path: str, batch_size: int) -> dict:
  """Frames/s of the forward alone over the video's windows; decoding is not timed."""
  import jax

  from visage_jax.data.video import open_video
  from visage_jax.inference import stream
  from visage_jax.runtime import parallel

  video = open_video(video_path)
  b = predictor.config.model.backbone
  source = stream.VideoSource(video, stream.stride_for(video.fps))
  sharding = parallel.batch_sharding(predictor.mesh)
  total, frames = 0.0, 0
  batches = stream.window_batches(
    source, window=b.num_frames, size=b.img_size, batch_size=batch_size * predictor.mesh.size
  )
  for batch in batches:
    clip = jax.device_put(batch.clip, sharding)
    jax.block_until_ready(clip)
    t0 = time.perf_counter()
    jax.block_until_ready(predictor.forward(predictor.state, clip))
    total += time.perf_counter() - t0
    frames += int(batch.mask.sum())
  return {"frames": frames, "seconds": round(total, 2), "fps": frames / total}


def end_to_end(predictor, video_path: str, batch_size: int, out_dir: str) -> dict:
  from visage_jax.inference.predict import run_settings, write_video_outputs

  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(out_dir)
  t0 = time.perf_counter()
  n = write_video_outputs(
    predictor, video_path, out_dir, settings=run_settings("benchmark"), batch_size=batch_size
  )
  seconds = time.perf_counter() - t0
  return {"frames": n, "seconds": round(seconds, 2), "fps": n / seconds}


class ThreadCPU:
  """CPU seconds of this process's threads while it is open, by role: the Python thread's name
  without its pool number ("write_3" → "write"), and "native" for threads Python did not start
  (x264's, ffmpeg's, XLA's). Read from /proc/self/task/*/schedstat every `interval` seconds, so a
  thread's last fraction of an interval before it ends is not counted. A role served by one
  thread (decode, encode-maps, encode-overlay, MainThread) is a serial chain: its CPU ms a frame
  bound the frames/s of any machine with these cores, however many."""

  def __init__(self, interval: float = 0.1):
    import threading

    self.interval, self._stop = interval, threading.Event()
    self._cpu: dict[int, tuple[str, int]] = {}  # thread id → (role, nanoseconds so far)
    self._thread = threading.Thread(
      target=self._sample_until_stopped, name="ThreadCPU", daemon=True
    )

  def _sample(self) -> None:
    import re
    import threading

    roles = {t.native_id: re.sub(r"_\d+$", "", t.name) for t in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
      try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
          ns = int(f.read().split()[0])
      except OSError:  # the thread ended
        continue
      role = roles.get(int(tid)) or self._cpu.get(int(tid), ("native", 0))[0]
      self._cpu[int(tid)] = (role, ns)

  def _sample_until_stopped(self) -> None:
    while not self._stop.wait(self.interval):
      self._sample()

  def __enter__(self):
    self._sample()
    self._start = dict(self._cpu)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._sample()

  def ms_per_frame(self, frames: int) -> dict:
    """{role: [CPU ms a frame, threads]} for roles that used at least 0.1 ms a frame."""
    import collections

    totals, threads = collections.Counter(), collections.Counter()
    for tid, (role, ns) in self._cpu.items():
      used = ns - self._start.get(tid, (role, 0))[1]
      if role == "ThreadCPU" or not used:
        continue
      totals[role] += used
      threads[role] += 1
    per_frame = {r: round(ns / 1e6 / frames, 2) for r, ns in totals.most_common()}
    return {r: [ms, threads[r]] for r, ms in per_frame.items() if ms >= 0.1}


def peak_rss(cmd: list[str]) -> float:
  """GiB: the peak resident memory of a child process (and what it waited for)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(proc.pid, 0)
  if status != 0:
    raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
  return usage.ru_maxrss / 2**20  # kilobytes on Linux


def compile_once(predictor, batch_size) -> None:
  import jax

  from visage_jax.runtime import parallel

  clip = np.zeros((batch_size * predictor.mesh.size, *predictor.clip_shape), np.float32)
  sharding = parallel.batch_sharding(predictor.mesh)
  jax.block_until_ready(predictor.forward(predictor.state, jax.device_put(clip, sharding)))


def evaluate_throughput(checkpoint: str, data: str, batch_size: int, out_dir: str) -> dict:
  from visage_jax.evaluation.evaluate import evaluate_dataset

  shutil.rmtree(out_dir, ignore_errors=True)  # else a reused --workdir would resume: nothing to do
  t0 = time.perf_counter()
  result = evaluate_dataset(checkpoint, data, "public_test", out_dir, batch_size=batch_size)
  seconds = time.perf_counter() - t0
  frames = result["overall"]["fused"]["ntire2026"]["cc"]["frames"]
  return {"frames": frames, "seconds": round(seconds, 2), "fps": frames / seconds}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--checkpoint", default="", help="a converted checkpoint (else --config)")
  ap.add_argument("--config", default="tiny", help="preset with random weights: tiny, 1b, 6b")
  ap.add_argument("--video", default="", help="an mp4 (else --make_video)")
  ap.add_argument("--make_video", default="1280x720,15,25", help="WxH,seconds,fps synthetic mp4")
  ap.add_argument("--batch_size", type=int, default=1, help="windows per device per step")
  ap.add_argument("--dtype", default="", help="activation dtype override")
  ap.add_argument("--eval_data", default="", help="challenge-layout root to time visage-eval on")
  ap.add_argument("--rss", default="", help="';'-separated WxH,seconds,fps videos: peak RSS")
  ap.add_argument("--workdir", default="", help="where videos and outputs go (default: temp)")
  args = ap.parse_args()
  for flag, command in (("eval_data", "visage-eval"), ("rss", "visage-predict")):
    if getattr(args, flag) and not args.checkpoint:  # said before the minutes of the runs
      ap.error(f"--{flag} runs {command}, which needs --checkpoint")

  import jax

  work = args.workdir or tempfile.mkdtemp(prefix="video_throughput_")
  os.makedirs(work, exist_ok=True)
  video = args.video or os.path.join(work, "input.mp4")
  if not args.video:
    make_video(video, args.make_video)
  dev = jax.devices()[0]
  record = {
    "device": getattr(dev, "device_kind", str(dev)),
    "devices": jax.local_device_count(),
    "cpu_cores": len(os.sched_getaffinity(0)),
    "model": args.checkpoint or args.config,
    "video": args.video or args.make_video,
  }
  predictor = load_predictor(args)
  compile_once(predictor, args.batch_size)
  record["forward_only"] = forward_only(predictor, video, args.batch_size)
  print(json.dumps({"forward_only": record["forward_only"]}), flush=True)
  record["end_to_end"] = end_to_end(predictor, video, args.batch_size, os.path.join(work, "e2e"))
  print(json.dumps({"end_to_end": record["end_to_end"]}), flush=True)
  fixed = FixedMapModel(predictor)
  with ThreadCPU() as cpu:
    record["host_only"] = end_to_end(fixed, video, args.batch_size, os.path.join(work, "host"))
  record["host_only"]["cpu_ms_per_frame"] = cpu.ms_per_frame(record["host_only"]["frames"])
  record["ratio_end_to_end_vs_forward"] = (
    record["end_to_end"]["fps"] / record["forward_only"]["fps"]
  )
  if args.eval_data:
    record["eval"] = evaluate_throughput(
      args.checkpoint, args.eval_data, args.batch_size, os.path.join(work, "eval")
    )
  if args.rss:
    record["peak_rss_gib"] = {}
    shutil.rmtree(os.path.join(work, "rss_out"), ignore_errors=True)  # else predict skips them
    for spec in args.rss.split(";"):
      path = os.path.join(work, f"rss_{spec.replace(',', '_')}.mp4")
      make_video(path, spec)
      cmd = [sys.executable, "-m", "visage_jax.cli.predict", f"--checkpoint={args.checkpoint}"]
      cmd += [f"--input={path}", f"--output={os.path.join(work, 'rss_out', spec)}"]
      record["peak_rss_gib"][spec] = round(peak_rss(cmd), 3)
  for key in ("forward_only", "end_to_end", "host_only", "eval"):
    if key in record:
      record[key]["fps"] = round(record[key]["fps"], 2)
  record["ratio_end_to_end_vs_forward"] = round(record["ratio_end_to_end_vs_forward"], 3)
  print(json.dumps(record))


if __name__ == "__main__":
  main()
