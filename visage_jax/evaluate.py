"""Evaluation: one jitted step giving both experts' maps, the fused map and per-frame metrics, and
the aggregation of those numbers per video and over a set.

Per frame, each map (expert1, expert2, fused) is scored at the ground truth's resolution the way
the challenge scores a submission: written as 8-bit (optional, on by default, as a saved map is),
read back (min-max), resized with OpenCV's bilinear, and compared with the ground truth read the
same way, in both metric variants.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visage_jax import metrics

METRICS = ("cc", "sim", "nss", "auc_judd", "kld")
VARIANTS = metrics.VARIANTS


def submission_maps(pred, out_hw):
  """What a submission holds: the map resized to the ground truth's (H, W) with OpenCV's bilinear
  and written as 8-bit (trunc(p·255)); float values 0…255."""
  big = metrics.cv2_resize_linear(pred, tuple(out_hw))
  return jnp.floor(jnp.clip(big * 255, 0, 255))


def score(pred_read, gt_read, fixations):
  """Both variants' metrics of maps already read as the scorer reads them (min-max, resized to
  the ground truth): {variant: {metric: (...)}}."""
  out = {}
  for variant in VARIANTS:
    out[variant] = {
      "cc": metrics.cc(pred_read, gt_read, variant=variant),
      "sim": metrics.sim(pred_read, gt_read, variant=variant),
      "kld": metrics.kld(pred_read, gt_read, variant=variant),
      "nss": metrics.nss(pred_read, fixations, variant=variant),
      "auc_judd": metrics.auc_judd(pred_read, fixations, variant=variant),
    }
  return out


def read_gt(gt):
  return metrics.ntire2026_preprocess(gt, gt.shape[-2:], channels=False)


def read_pred(pred, hw, *, quantize_uint8: bool):
  """(the map as scored, the 8-bit submission map or None). With `quantize_uint8` the prediction
  is read as the challenge reads a submitted 8-bit map at the ground truth's resolution
  (`submission_maps`); otherwise the float map goes through the scorer's min-max and resize."""
  sub = submission_maps(pred, hw) if quantize_uint8 else None
  src = pred if sub is None else sub
  return metrics.ntire2026_preprocess(src, hw, channels=False), sub


def frame_metrics(pred, gt, fixations, *, quantize_uint8: bool = True):
  """pred: (..., h, w) probabilities; gt: (..., H, W) ground-truth map (any scale); fixations:
  (..., H, W) event counts. Returns {variant: {metric: (...)}}."""
  p, _ = read_pred(pred, gt.shape[-2:], quantize_uint8=quantize_uint8)
  return score(p, read_gt(gt), fixations)


def make_eval_step(graphdef, *, quantize_uint8: bool = True, mesh=None, return_submission=False):
  """The jitted step: (state, batch) → {"maps": {...}, "metrics": {source: {variant: {metric}}}}.

  batch: clip (B, T, S, S, 3) normalised frames; gt (B, T, H, W); fixations (B, T, H, W) int
  counts; mask (B, T) bool, false on padded frames, whose metrics come out NaN. With `mesh`, the
  batch is split over its (data, fsdp) axes and the parameters are replicated. With
  `return_submission`, also "submission": the fused maps exactly as scored, uint8 (B, T, H, W).
  """

  def step(state, batch):
    model = nnx.merge(graphdef, state)
    out = model(batch["clip"])
    names = [k for k in ("expert1", "expert2") if k in out] + ["fused"]
    result = {"maps": {k: out[k] for k in names}, "metrics": {}}
    mask = batch["mask"]
    g = read_gt(batch["gt"])  # once for all three maps
    hw = batch["gt"].shape[-2:]
    for k in names:
      p, sub = read_pred(out[k], hw, quantize_uint8=quantize_uint8)
      m = score(p, g, batch["fixations"])
      result["metrics"][k] = jax.tree.map(lambda v: jnp.where(mask, v, jnp.nan), m)
      if return_submission and k == "fused":
        if sub is None:  # scored as floats; the written maps are still the 8-bit ones
          sub = submission_maps(out[k], hw)
        result["submission"] = sub.astype(jnp.uint8)
    return result

  if mesh is None:
    return jax.jit(step)
  from visage_jax import parallel

  data = parallel.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(parallel.replicated(mesh), data), out_shardings=data)


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
    self._frames.setdefault(video, []).append(flat)

  def videos(self) -> list[str]:
    return sorted(self._frames)

  def _stack(self, video):
    chunks = self._frames[video]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

  def report(self) -> dict:
    per_video = {}
    pooled: dict = {}
    for video in self.videos():
      stacked = self._stack(video)
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


def format_table(report: dict, variant: str = "ntire2026") -> str:
  """The headline numbers: challenge aggregation, one row per map."""
  overall = report["overall"]
  cols = ("cc", "sim", "nss", "auc_judd")
  lines = [f"{variant} (mean over videos of per-video means; {overall['videos']} videos)"]
  lines.append(f"{'map':<9}" + "".join(f"{c:>10}" for c in cols))
  for source in [s for s in ("expert1", "expert2", "fused") if s in overall]:
    row = overall[source][variant]
    cells = []
    for c in cols:
      v = row[c]["challenge"] if c in row else None
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

  with open(path, "w") as f:
    json.dump(clean(obj), f, indent=2)


def evaluate_dataset(
  checkpoint: str,
  data: str,
  split: str,
  output: str,
  *,
  save_maps: bool = False,
  batch_size: int = 2,
  stride: int = 0,
  dtype: str | None = None,
  quantize_uint8: bool = True,
  max_videos: int = 0,
) -> dict:
  import jax
  from flax import nnx
  from tqdm import tqdm

  from visage_jax import checkpoint as ckpt
  from visage_jax import writers
  from visage_jax.data import challenge
  from visage_jax.data.clips import load_batch, window_batches
  from visage_jax.data.windows import inference_windows

  layout = challenge.ChallengeLayout(data)
  entries = layout.entries(split)
  if max_videos:
    entries = entries[:max_videos]
  if not entries:
    raise challenge.DataError(f"{layout.split_file}: split {split!r} lists no videos")
  overrides = {"dtype": dtype} if dtype else {}
  cfg, model = ckpt.load_model(checkpoint, model_overrides=overrides)
  graphdef, state = nnx.split(model)
  step = make_eval_step(graphdef, quantize_uint8=quantize_uint8, return_submission=save_maps)
  size = cfg.model.backbone.img_size
  window = cfg.model.backbone.num_frames
  os.makedirs(output, exist_ok=True)
  pred_root = os.path.join(output, "predictions")
  agg = Aggregator()
  t0 = time.time()
  frames_done = 0
  bar = tqdm(entries, desc=f"{split}", unit="video")
  for entry in bar:
    video, sal = challenge.open_pair(entry)
    points = challenge.load_fixations(entry.fixations, video.num_frames, video.height, video.width)
    s = stride or max(1, round(video.fps / 5))
    windows = inference_windows(video.num_frames, window, s)
    tmp_dir = None
    if save_maps:
      os.makedirs(pred_root, exist_ok=True)
      tmp_dir = os.path.join(pred_root, f".{entry.name}.partial")
      shutil.rmtree(tmp_dir, ignore_errors=True)
      os.makedirs(tmp_dir)
    for chunk, real in window_batches(windows, batch_size):
      batch = load_batch(chunk, video, size=size, saliency=sal, fixations=points)
      feed = {k: batch[k] for k in ("clip", "gt", "fixations", "mask")}
      out = jax.device_get(step(state, feed))
      for b in range(real):
        per = jax.tree.map(lambda x, b=b: x[b], out["metrics"])
        agg.add(entry.name, per, batch["mask"][b])
        if save_maps:
          fused = out["maps"]["fused"][b]
          for t in np.nonzero(batch["mask"][b])[0]:
            big = writers.resize_map(fused[t], (video.height, video.width))
            u8 = writers.map_to_uint8(big)
            writers.write_png(
              os.path.join(tmp_dir, writers.map_filename(int(batch["indices"][b, t]))), u8
            )
        frames_done += int(batch["mask"][b].sum())
    if save_maps:
      _finish_video(tmp_dir, pred_root, entry.name, video.num_frames, video.fps)
    bar.set_postfix(frames=frames_done, fps=f"{frames_done / (time.time() - t0):.1f}")
  report = agg.report()
  result = {
    "checkpoint": os.path.abspath(checkpoint),
    "data": os.path.abspath(data),
    "split": split,
    "quantize_uint8": quantize_uint8,
    "aggregation": {
      "challenge": "mean over each video's frames, then the unweighted mean over videos",
      "pooled": "mean over all frames of all videos",
    },
    **report,
  }
  write_json(os.path.join(output, "metrics.json"), result)
  return result


def _finish_video(tmp_dir, pred_root, name, num_frames, fps):
  """PNGs complete: encode the mp4 from them, then move both into place."""
  from PIL import Image

  from visage_jax import writers

  names = [writers.map_filename(i) for i in range(num_frames)]
  missing = [n for n in names if not os.path.exists(os.path.join(tmp_dir, n))]
  if missing:
    raise RuntimeError(f"{name}: internal: {len(missing)} maps not written (first {missing[0]})")
  frames = np.stack([np.asarray(Image.open(os.path.join(tmp_dir, n))) for n in names])
  mp4_tmp = os.path.join(pred_root, f".{name}.partial.mp4")
  writers.write_mp4(mp4_tmp, frames, fps, lossless=True)
  final_dir = os.path.join(pred_root, name)
  shutil.rmtree(final_dir, ignore_errors=True)
  os.rename(tmp_dir, final_dir)
  os.replace(mp4_tmp, os.path.join(pred_root, name + ".mp4"))
