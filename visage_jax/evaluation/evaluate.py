"""Evaluation: one jitted step giving both experts' maps, the fused map and per-frame metrics, and
the aggregation of those numbers per video and over a set.

Per frame, each map (expert1, expert2, fused) is scored at the ground truth's resolution the way
the challenge scores a submission: written as 8-bit (optional, on by default, as a saved map is),
read back (min-max), resized with OpenCV's bilinear, and compared with the ground truth read the
same way, in both metric variants. The field's layouts (DHF1K, Hollywood-2, UCF-Sports) add the
DHF1K protocol's s-AUC: negatives from other videos' frames (`layouts.ShuffledNegatives`), the
exact ROC AUC on the device and `AUC_shuffled.m` in float64 on the host from the 8-bit maps' level
histograms (`shuffled_auc`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visage_jax import metrics
from visage_jax.evaluation.records import (
  RECORDS_DIR,
  check_shared_output,
  eval_settings,
  failure_note,
  read_record,
  record_path,
  sync,
  videos_to_score,
  write_record,
)
from visage_jax.inference.core import maps_program
from visage_jax.inference.writers import default_workers
from visage_jax.runtime.files import into_place, staging, written_whole

METRICS = ("cc", "sim", "nss", "auc_judd", "kld")
VARIANTS = metrics.VARIANTS


def submission_maps(pred, out_hw):
  """What a submission holds: the map resized to the ground truth's (H, W) with OpenCV's bilinear
  and written as 8-bit (trunc(p·255)); float values 0…255."""
  big = metrics.cv2_resize_linear(pred, tuple(out_hw))
  return jnp.floor(jnp.clip(big * 255, 0, 255))


def score(pred_read, gt_read, fixations, levels=None):
  """Both variants' metrics of maps already read as the scorer reads them (min-max, resized to
  the ground truth): {variant: {metric: (...)}}. `levels`: the 8-bit maps they were read from,
  if they were (AUC-Judd then counts pixels by level, `metrics.auc_judd`)."""
  out = {}
  for variant in VARIANTS:
    out[variant] = {
      "cc": metrics.cc(pred_read, gt_read, variant=variant),
      "sim": metrics.sim(pred_read, gt_read, variant=variant),
      "kld": metrics.kld(pred_read, gt_read, variant=variant),
      "nss": metrics.nss(pred_read, fixations, variant=variant),
      "auc_judd": metrics.auc_judd(pred_read, fixations, variant=variant, levels=levels),
    }
  return out


def shuffled_auc(host_levels: dict, per_frame: dict, batch, b: int, video: str, protocol: dict):
  """The mit s-AUC of window `b`, from its 8-bit maps' level histograms (`metrics.sauc_levels`,
  float64, as `AUC_shuffled.m` computes it): "sauc" with every negative, "sauc_splits" with the
  code's `protocol["splits"]` random draws, seeded by (seed, video, frame, map) so that they do
  not depend on batching or processes."""
  for i, source in enumerate(sorted(host_levels)):
    hist, span = host_levels[source]
    every = np.full(batch.mask.shape[1], np.nan)
    drawn = every.copy()
    for t in np.nonzero(batch.mask[b])[0]:
      lo, hi = (int(v) for v in span[b, t])
      every[t] = metrics.sauc_levels(hist[b, t], lo, hi)
      key = [protocol["seed"], zlib.crc32(video.encode()), int(batch.indices[b, t]), i]
      rng = np.random.default_rng(key)
      drawn[t] = metrics.sauc_levels(hist[b, t], lo, hi, splits=protocol["splits"], rng=rng)
    per_frame[source]["mit"]["sauc"] = every
    per_frame[source]["mit"]["sauc_splits"] = drawn


# The mit s-AUC of a frame is float64 work on the host (3 maps × 100 hypergeometric draws, ~10 ms
# a map); it runs on these threads (numpy's draws release the GIL), off the thread feeding the
# devices.
_SAUC_THREADS = default_workers()
_SAUC_POOL = concurrent.futures.ThreadPoolExecutor(_SAUC_THREADS, thread_name_prefix="sauc")


class WindowScores:
  """One video's windows' per-frame numbers into `agg`, in window order, each window's mit s-AUC
  (`shuffled_auc`) computed on a pool of threads meanwhile; at most a few windows wait."""

  def __init__(self, agg, video: str, protocol: dict | None):
    self.agg, self.video, self.protocol = agg, video, protocol
    self._waiting: collections.deque = collections.deque()

  def add(self, out: dict, batch, b: int) -> None:
    """Window `b` of `batch`, whose step outputs (on the host) are `out`."""
    per_frame = jax.tree.map(lambda x: x[b], out["metrics"])
    job = None
    if "sauc_levels" in out:
      args = (out["sauc_levels"], per_frame, batch, b, self.video, self.protocol)
      job = _SAUC_POOL.submit(shuffled_auc, *args)
    self._waiting.append((job, per_frame, batch.mask[b]))
    self._settle(keep=4 * _SAUC_THREADS)

  def finish(self) -> None:
    self._settle(keep=0)

  def _settle(self, keep: int) -> None:
    """Add the waiting windows that are done, in order; wait for more while over `keep`."""
    while self._waiting:
      job, per_frame, mask = self._waiting[0]
      if job is not None and len(self._waiting) <= keep and not job.done():
        return
      if job is not None:
        job.result()
      self._waiting.popleft()
      self.agg.add(self.video, per_frame, mask)


def read_gt(gt):
  return metrics.ntire2026_preprocess(gt, gt.shape[-2:], channels=False)


def read_pred(pred, hw, *, quantize_uint8: bool):
  """(the map as scored, the 8-bit map it was read from or None). With `quantize_uint8` the
  prediction is read as the challenge reads a submitted 8-bit map at the ground truth's
  resolution (`submission_maps`); otherwise the float map goes through the scorer's min-max and
  resize."""
  levels = submission_maps(pred, hw) if quantize_uint8 else None
  src = pred if levels is None else levels
  return metrics.ntire2026_preprocess(src, hw, channels=False), levels


def frame_metrics(pred, gt, fixations, *, quantize_uint8: bool = True):
  """pred: (..., h, w) probabilities; gt: (..., H, W) ground-truth map (any scale); fixations:
  (..., H, W) event counts. Returns {variant: {metric: (...)}}."""
  p, levels = read_pred(pred, gt.shape[-2:], quantize_uint8=quantize_uint8)
  return score(p, read_gt(gt), fixations, levels)


SCORE_FRAMES = 1  # frames of each window scored at once (each map in turn)


def make_eval_step(graphdef, *, quantize_uint8: bool = True, mesh=None):
  """The jitted step: (state, batch) → {"maps": {...}, "metrics": {source: {variant: {metric}}}}:
  the maps program (`inference.core`) with every map scored on top, one map after another
  and `SCORE_FRAMES` frames of each window at a time (what scoring holds at the ground truth's
  size is then that many frames of each window, of one map, whatever the window's length).

  batch: clip (B, T, S, S, 3) normalised frames; gt (B, T, H, W); fixations (B, T, H, W) int
  counts; mask (B, T) bool, false on padded frames, whose metrics come out NaN; optionally
  negatives (B, T, H, W) int, for s-AUC (with `quantize_uint8`: the mit one comes out as level
  histograms under "sauc_levels", for `shuffled_auc` on the host). With `mesh`, the batch is
  split over its (data, fsdp) axes and the parameters are replicated.
  """

  def score_frame(frame):
    """One map's frames (B, S, S) against their ground truth, read (`g`), and fixations."""
    m, hw = frame["map"], frame["g"].shape[-2:]
    p, levels = read_pred(m, hw, quantize_uint8=quantize_uint8)
    scores = score(p, frame["g"], frame["fixations"], levels)
    out = {}
    if "negatives" in frame:  # s-AUC: the exact one here, the mit one on the host
      fix, neg = frame["fixations"], frame["negatives"]
      scores["ntire2026"]["sauc"] = metrics.sauc(p, fix, neg)
      eight_bit = submission_maps(m, hw) if levels is None else levels
      out["sauc_levels"] = metrics.level_histograms(eight_bit, fix, neg)
    out["metrics"] = jax.tree.map(lambda v: jnp.where(frame["mask"], v, jnp.nan), scores)
    return out

  def score_map(m, frames):
    """One map (B, T, S, S), SCORE_FRAMES of each window's frames at a time: what scoring holds
    at the ground truth's size does not grow with the window. The loop runs over the frames of
    a window, not over the batch, whose axis stays split over the devices (each scores its
    own windows; a loop over a split axis would make them exchange frames)."""
    by_frame = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), {**frames, "map": m})
    out = jax.lax.map(score_frame, by_frame, batch_size=SCORE_FRAMES)
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)

  def scored(maps, batch):
    frames = {k: batch[k] for k in ("fixations", "negatives", "mask") if k in batch}
    frames["g"] = read_gt(batch["gt"])
    names = list(maps)
    scored = jax.lax.map(lambda m: score_map(m, frames), jnp.stack([maps[k] for k in names]))
    result = {"maps": maps}
    for part in scored:
      result[part] = {
        k: jax.tree.map(lambda x, i=i: x[i], scored[part]) for i, k in enumerate(names)
      }
    return result

  return maps_program(graphdef, mesh=mesh, score=scored)


def fixation_maps(points, hw):
  """int32 (..., H, W): how many of the [y, x] rows of `points` (..., P, 2) fall on each pixel,
  rows of -1 being padding. The count maps the metrics take, made where they run from P rows a
  frame instead of sent whole (166 MB a 20-frame 1080p window)."""
  h, w = hw
  rows = points.reshape(-1, points.shape[-2], 2)
  pixel = jnp.where(rows[..., 0] >= 0, rows[..., 0] * w + rows[..., 1], h * w)  # a spare pixel
  frame = jnp.arange(rows.shape[0])[:, None]
  counts = jnp.zeros((rows.shape[0], h * w + 1), jnp.int32).at[frame, pixel].add(1)
  return counts[:, : h * w].reshape(*points.shape[:-2], h, w)


def on_fixation_points(step, mesh=None):
  """`step` (`make_eval_step`'s) fed as the video stream feeds it: fixations and negatives as
  padded points (B, T, P, 2) (`stream.padded_points`). Their count maps are made on the devices
  by a small program, one per P, then `step` runs."""
  from visage_jax.runtime import parallel

  out = None if mesh is None else parallel.batch_sharding(mesh)
  to_maps = parallel.jit_on_mesh(fixation_maps, mesh, out_shardings=out, static_argnums=1)

  def step_on_points(state, batch):
    hw = tuple(batch["gt"].shape[-2:])
    maps = {k: to_maps(batch[k], hw) for k in ("fixations", "negatives") if k in batch}
    return step(state, {**batch, **maps})

  return step_on_points


class Aggregator:
  """Collects per-frame metrics per video; reports the challenge's aggregation (mean over a
  video's frames, then the unweighted mean over videos) and the pooled mean over all frames.

  Frames whose metric is undefined (NaN: no fixations, a constant map under a definition that
  divides by its spread) are left out of that metric's means and counted.
  """

  def __init__(self):
    self._frames: dict[str, list] = {}

  def add(self, video: str, per_frame: dict, mask) -> None:
    """per_frame: {source: {variant: {metric: (T,)}}} for one window of `video`; mask: (T,)."""
    mask = np.asarray(mask, bool)
    flat = {}
    for source, by_variant in per_frame.items():
      for variant, by_metric in by_variant.items():
        for metric, values in by_metric.items():
          flat[(source, variant, metric)] = np.asarray(values, np.float64)[mask]
    self.add_frames(video, flat)

  def add_frames(self, video: str, frames: dict) -> None:
    """Numbers of `video`'s next frames: {(source, variant, metric): float64 (N,)}, as `frames_of`
    gives them (a video's record, read back)."""
    self._frames.setdefault(video, []).append(frames)

  def videos(self) -> list[str]:
    return sorted(self._frames)

  def frames_of(self, video: str) -> dict:
    """{(source, variant, metric): float64 (N,)}: the video's numbers of every frame, in order."""
    chunks = self._frames[video]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

  def pop(self, video: str) -> dict:
    """`frames_of(video)`, no longer held here."""
    frames = self.frames_of(video)
    self.discard(video)
    return frames

  def discard(self, video: str) -> None:
    """Forget what is held of `video` (any frames of it)."""
    self._frames.pop(video, None)

  def report(self) -> dict:
    per_video = {}
    pooled: dict = {}
    for video in self.videos():
      stacked = self.frames_of(video)
      entry: dict = {"frames": int(len(next(iter(stacked.values()))))}
      for (source, variant, metric), values in stacked.items():
        ok = ~np.isnan(values)
        node = entry.setdefault(source, {}).setdefault(variant, {})
        node[metric] = float(values[ok].mean()) if ok.any() else None
        skipped = int((~ok).sum())
        if skipped:
          node.setdefault("undefined_frames", {})[metric] = skipped
        pooled.setdefault((source, variant, metric), []).append(values)
      per_video[video] = entry
    overall: dict = {"videos": len(per_video)}
    for (source, variant, metric), chunks in sorted(pooled.items()):
      node = overall.setdefault(source, {}).setdefault(variant, {})
      vmeans = [
        per_video[v][source][variant][metric]
        for v in per_video
        if per_video[v][source][variant][metric] is not None
      ]
      allv = np.concatenate(chunks)
      ok = ~np.isnan(allv)
      node[metric] = {
        "challenge": float(np.mean(vmeans)) if vmeans else None,
        "pooled": float(allv[ok].mean()) if ok.any() else None,
        "frames": int(ok.sum()),
        "undefined_frames": int((~ok).sum()),
        "videos_without_value": len(per_video) - len(vmeans),
      }
    return {"overall": overall, "per_video": per_video}


HEADERS = {"auc_judd": "AUC-J", "sim": "SIM", "sauc": "s-AUC", "cc": "CC", "nss": "NSS"}
# What `visage-eval` prints: the challenge's numbers, or the DHF1K protocol's in the papers' order.
TABLES = {
  "ntire2026": [
    ("ntire2026", ("cc", "sim", "nss", "auc_judd"), "challenge"),
    ("mit", ("cc", "sim", "nss", "auc_judd"), "challenge"),
  ],
  "dhf1k": [
    ("mit", ("auc_judd", "sim", "sauc", "cc", "nss"), "pooled"),
    ("mit", ("auc_judd", "sim", "sauc", "cc", "nss"), "challenge"),
  ],
}
AGGREGATIONS = {
  "challenge": "mean over each video's frames, then the unweighted mean over videos",
  "pooled": "mean over all frames of all videos (the DHF1K benchmark's)",
}


def counted(n: int, noun: str) -> str:
  """A count for a message: "1 video", "3 videos"."""
  return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_table(
  report: dict,
  variant: str = "ntire2026",
  columns=("cc", "sim", "nss", "auc_judd"),
  aggregation: str = "challenge",
) -> str:
  """One row per map: `columns` of `variant` under `aggregation` ("challenge" or "pooled")."""
  overall = report["overall"]
  lines = [f"{variant}: {AGGREGATIONS[aggregation]} ({counted(overall['videos'], 'video')})"]
  lines.append(f"{'map':<9}" + "".join(f"{HEADERS[c]:>10}" for c in columns))
  for source in [s for s in ("expert1", "expert2", "fused") if s in overall]:
    row = overall[source][variant]
    cells = []
    for c in columns:
      v = row[c][aggregation] if c in row else None
      cells.append(f"{v:>10.4f}" if v is not None else f"{'—':>10}")
    lines.append(f"{source:<9}" + "".join(cells))
  return "\n".join(lines)


def write_json(path: str, obj) -> None:
  def clean(x):
    if isinstance(x, float) and math.isnan(x):
      return None
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
      return [clean(v) for v in x]
    return x

  with written_whole(path) as f:
    json.dump(clean(obj), f, indent=2)


@dataclasses.dataclass
class EvalRun:
  """What every video of one evaluation shares."""

  step: object  # on_fixation_points(make_eval_step(...))
  state: object
  mesh: object
  window: int
  size: int
  batch_size: int  # windows per step over all local devices
  stride: int  # 0: round(fps / 5) for each video
  agg: Aggregator
  source_fps: float | None = None  # of videos given as folders of frames
  protocol: dict | None = None  # the DHF1K protocol's s-AUC settings (dhf1k_protocol)
  negatives: object | None = None  # layouts.ShuffledNegatives, which also holds every fixation
  progress: object | None = None  # a tqdm bar of the current video's frames


def evaluate_video(run: EvalRun, entry, outputs=None) -> None:
  """Score every frame of one video into `run.agg`; with `outputs` (a `writers.VideoOutputs`)
  also write its fused maps as they become final."""
  from visage_jax.data import layouts
  from visage_jax.inference import core, stream

  pooled = run.negatives is not None
  video, sal, points = layouts.open_entry(entry, source_fps=run.source_fps, points=not pooled)
  negatives = None
  if pooled:
    points = run.negatives.points[entry.name][0]
    negatives = functools.partial(run.negatives, entry.name, hw=(video.height, video.width))
  stride = run.stride or stream.stride_for(video.fps)
  if run.progress is not None:
    run.progress.reset(total=video.num_frames)
  source = stream.VideoSource(video, stride, sal, points, negatives)
  batches = stream.window_batches(
    source, window=run.window, size=run.size, batch_size=run.batch_size
  )
  fused = lambda out: {"fused": out["maps"]["fused"]}  # noqa: E731
  step, levels_of = run.step, None
  if outputs is not None:  # the maps' 8-bit levels made on the devices, as visage-predict's
    step = core.with_levels(run.step, outputs.sizes(), maps_of=fused, mesh=run.mesh)
    levels_of = lambda out: out["levels"]  # noqa: E731
  results = stream.run_batches(step, run.state, stream.prefetch(batches, 2), run.mesh)

  scores = WindowScores(run.agg, entry.name, run.protocol)

  def scored(results):
    for batch, out in results:
      for b in range(batch.real):
        scores.add(out, batch, b)
      yield batch, out

  for frame in stream.frames_in_order(scored(results), fused, levels_of):
    if outputs is not None:
      outputs.add(frame.index, frame.maps, levels=frame.levels)
    if run.progress is not None:
      run.progress.update(1)
  scores.finish()


def _save_maps_of(entry, pred_root, run, source_fps=None):
  """Run `run(outputs=...)` with the video's maps written into a staging folder and moved into
  place when whole."""
  from visage_jax.data.video import open_video, variable_times
  from visage_jax.inference import writers

  video = open_video(entry.video, fps=source_fps)
  with staging(os.path.join(pred_root, f".{entry.name}.partial"), folder=True) as stage:
    maps, mp4 = os.path.join(stage, "maps"), os.path.join(stage, "maps.mp4")
    os.makedirs(maps)
    outputs = writers.VideoOutputs(
      {"fused": maps},
      source_hw=(video.height, video.width),
      fps=video.fps,
      maps_mp4=mp4,
      times=variable_times(video),
    )
    try:
      run(outputs=outputs)
      outputs.close()
    except BaseException:
      outputs.abort()
      raise
    into_place(maps, os.path.join(pred_root, entry.name))
    into_place(mp4, os.path.join(pred_root, entry.name + ".mp4"))


SAUC_SPLITS = 100  # AUC_shuffled.m's default Nsplits


def dhf1k_protocol(m: int, seed: int) -> dict:
  """The DHF1K protocol's settings, as recorded in metrics.json."""
  return {
    "name": "dhf1k",
    "variant": "mit",
    "frames": "every annotated frame, at the annotation's resolution",
    "sauc_negatives": "union of the fixations of M frames of other videos of the split, each a "
    "video drawn uniformly then one of its frames, seeded by (seed, video, frame)",
    "M": m,
    "seed": seed,
    "splits": SAUC_SPLITS,
    "step": metrics.SAUC_STEP,
    "sauc": "mit: AUC_shuffled.m on the 8-bit maps with every negative (its expected value but "
    "for the thresholds following each draw's max); ntire2026: the exact ROC AUC against them",
    "sauc_splits": "mit: AUC_shuffled.m's own random draws, seeded by (seed, video, frame, map)",
  }


def fixation_pool(entries, source_fps, protocol: dict):
  """`layouts.ShuffledNegatives` over every video of the split (read once, up front)."""
  from tqdm import tqdm

  from visage_jax.data import layouts

  points = {}
  for entry in tqdm(entries, desc="fixations", unit="video"):
    video, _, per_frame = layouts.open_entry(entry, source_fps=source_fps)
    points[entry.name] = (per_frame, (video.height, video.width))
  return layouts.ShuffledNegatives(points, m=protocol["M"], seed=protocol["seed"])


def evaluate_dataset(
  checkpoint: str,
  data: str,
  split: str | None,
  output: str,
  *,
  layout: str = "ntire2026",
  source_fps: float | None = None,
  sauc_frames: int = 10,
  sauc_seed: int = 0,
  save_maps: bool = False,
  batch_size: int = 2,
  stride: int = 0,
  dtype: str | None = None,
  quantize_uint8: bool = True,
  max_videos: int = 0,
  overwrite: bool = False,
) -> dict:
  """Every frame of every video of `split` (None: the layout's evaluation split), scored;
  `batch_size` windows per local device. The dhf1k, hollywood2 and ucf_sports layouts add the
  DHF1K protocol's s-AUC (`sauc_frames` other frames' fixations as negatives, `sauc_seed`). With
  several processes each takes its share of the videos and process 0 writes the report (the
  others return it too). Writes OUTPUT/metrics.json (and the maps with `save_maps`).

  Each scored video's numbers are recorded with the settings that made them
  (OUTPUT/.visage-eval/<video>.npz): a rerun scores only the videos not scored with these
  settings, refusing (`resume.SettingsConflict`) to score again those scored with others unless
  `overwrite`; metrics.json is made from the records of every video of the split."""
  from visage_jax.data import layouts

  split = split or layouts.EVAL_SPLIT.get(layout)
  entries = layouts.eval_entries(layout, data, split, max_videos)
  layouts.check_protocol_settings(layout, quantize_uint8, source_fps)
  protocol = None
  if layout != "ntire2026":
    protocol = dhf1k_protocol(sauc_frames, sauc_seed)
    if len(entries) < 2:
      print(f"visage-eval: s-AUC is undefined: split {split!r} has one video", file=sys.stderr)
  settings = eval_settings(
    checkpoint,
    data,
    layout,
    entries,
    protocol,
    stride=stride,
    dtype=dtype,
    quantize_uint8=quantize_uint8,
    source_fps=source_fps,
  )
  check_shared_output(output)
  todo = videos_to_score(entries, output, settings, save_maps=save_maps, overwrite=overwrite)
  sync("visage-eval: planned")  # no record is written before every process has read them
  if todo:
    run = scoring_run(checkpoint, entries, settings, protocol, batch_size=batch_size)
    score_videos(run, todo, output, settings, split=split, save_maps=save_maps)
  sync("visage-eval: scored")
  return _report(checkpoint, data, layout, split, quantize_uint8, protocol, entries, output)


def _report(checkpoint, data, layout, split, quantize_uint8, protocol, entries, output) -> dict:
  """metrics.json (written by process 0) from every video's record: what was scored and how."""
  result = {
    "checkpoint": os.path.abspath(checkpoint),
    "data": os.path.abspath(data),
    "layout": layout,
    "split": split,
    "quantize_uint8": quantize_uint8,
    "aggregation": AGGREGATIONS,
    **({"protocol": protocol} if protocol else {}),
    **records_report(entries, output),
  }
  if jax.process_index() == 0:
    write_json(os.path.join(output, "metrics.json"), result)
  return result


def scoring_run(checkpoint, entries, settings: dict, protocol, *, batch_size: int) -> EvalRun:
  """The model, the evaluation step over this process's devices and what every video shares
  (`entries`: the whole split, whose fixations give s-AUC's negatives)."""
  from visage_jax import checkpoint as ckpt
  from visage_jax.inference import stream
  from visage_jax.runtime import parallel

  source_fps, dtype = settings["source_fps"], settings["dtype"]
  negatives = fixation_pool(entries, source_fps, protocol) if protocol else None
  cfg, model = ckpt.load_model(checkpoint, model_overrides={"dtype": dtype} if dtype else {})
  mesh = stream.local_mesh()
  graphdef, state = nnx.split(model)
  step = make_eval_step(graphdef, quantize_uint8=settings["quantize_uint8"], mesh=mesh)
  return EvalRun(
    step=on_fixation_points(step, mesh),
    state=jax.device_put(state, parallel.replicated(mesh)),
    mesh=mesh,
    window=cfg.model.backbone.num_frames,
    size=cfg.model.backbone.img_size,
    batch_size=batch_size * mesh.size,
    stride=settings["stride"],
    agg=Aggregator(),
    source_fps=source_fps,
    protocol=protocol,
    negatives=negatives,
  )


class VideosFailed(Exception):
  """Videos of the split that could not be scored, each named with why; the others are recorded,
  and a rerun scores only what is missing."""


def score_videos(run: EvalRun, todo, output: str, settings: dict, *, split, save_maps) -> None:
  """This process's share of `todo` (`score_video` each), under a bar of the videos and one of
  the current video's frames."""
  from tqdm import tqdm

  mine = todo[jax.process_index() :: jax.process_count()]
  os.makedirs(os.path.join(output, RECORDS_DIR), exist_ok=True)
  if save_maps:
    os.makedirs(os.path.join(output, "predictions"), exist_ok=True)
  for entry in tqdm(mine, desc=split, unit="video", position=0):
    with tqdm(desc=entry.name, unit="frame", position=1, leave=False) as frames:
      run.progress = frames
      score_video(run, entry, output, settings, save_maps=save_maps)


def score_video(run: EvalRun, entry, output: str, settings: dict, *, save_maps: bool) -> None:
  """One video scored (with `save_maps`, its maps written) and recorded as soon as it is. One that
  cannot be read is skipped, saying why on stderr and in a note beside the records (named by
  `records_report`), so that the other videos, and the other processes, finish."""
  from tqdm import tqdm

  from visage_jax.data.challenge import DataError
  from visage_jax.data.video import VideoError

  note = failure_note(output, entry.name)
  try:
    if save_maps:
      score = functools.partial(evaluate_video, run, entry)
      _save_maps_of(entry, os.path.join(output, "predictions"), score, run.source_fps)
    else:
      evaluate_video(run, entry)
  except (DataError, VideoError) as e:
    run.agg.discard(entry.name)
    with written_whole(note) as f:
      f.write(str(e))
    tqdm.write(f"visage-eval: skipped {e}", file=sys.stderr)
    return
  write_record(record_path(output, entry.name), settings, run.agg.pop(entry.name))
  if os.path.exists(note):
    os.remove(note)


def records_report(entries, output: str) -> dict:
  """`Aggregator.report` of the records of every entry; `VideosFailed` if any has none."""
  agg, failed = Aggregator(), []
  for entry in entries:
    record = read_record(record_path(output, entry.name))
    if record is not None:
      agg.add_frames(entry.name, record[1])
      continue
    try:
      with open(failure_note(output, entry.name)) as f:
        failed.append(f.read())
    except OSError:
      failed.append(f"{entry.name}: not scored (its process stopped?)")
  if failed:
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    raise VideosFailed(
      f"{len(failed)} of {len(entries)} videos could not be scored: {failed[0]}{more}; the others "
      f"are recorded in {os.path.join(output, RECORDS_DIR)}, and a rerun scores only what is "
      "missing; metrics.json not written"
    )
  return agg.report()
