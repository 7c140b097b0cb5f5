"""The trainer's validation: the original's 4 evenly spaced windows of every video of a prepared
split, scored at model size with the challenge's metrics, per video then over videos, or
(`train.val_metrics="original"`) with the original's own CC, SIM and NSS over every frame.

Nothing it holds grows with the split: each validation reads the prepared videos again, one at a
time, in a background thread that stays two batches ahead of the devices (`stream.prefetch`,
`stream.run_batches`), and each batch of windows is split over the training mesh's batch axes.
A partner's maps (fused validation) are kept between validations: the other expert is fixed, so
its maps are computed once (on the training mesh, with the partner's weights laid out as the
trained model's), float32 at model size (200 KB a validated frame at 224), in an unnamed file
that is read back a batch at a time.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.visage import expert_name
from visage_jax import metrics
from visage_jax.data.challenge import fixation_counts
from visage_jax.data.windows import validation_windows
from visage_jax.evaluation import evaluate
from visage_jax.inference import stream
from visage_jax.inference.core import maps_program
from visage_jax.runtime import parallel

PREFETCH = 2  # batches read ahead of the devices


@dataclasses.dataclass
class ValidationBatch:
  """B windows at model size (S); windows past `real` are padding, masked out."""

  videos: list[str]  # the video of each real window
  frames: np.ndarray  # uint8 (B, T, S, S, 3)
  saliency: np.ndarray  # uint8 (B, T, S, S)
  counts: np.ndarray  # int32 (B, T, S, S): fixation events on each pixel
  mask: np.ndarray  # bool (B, T): false on padded frames and padding windows
  real: int
  partner: np.ndarray | None = None  # float32 (B, T, S, S): the partner expert's maps

  def model_input(self) -> dict:
    out = dict(frames=self.frames, saliency=self.saliency, counts=self.counts, mask=self.mask)
    if self.partner is not None:
      out["partner"] = self.partner
    return out


def window_plan(source, window: int) -> list[tuple[int, list]]:
  """(example index, the original's validation windows (indices, mask)) of every video."""
  plan = []
  for i in range(len(source)):
    frames = len(source[i]["frame_index"])
    plan.append((i, validation_windows(frames, window)))
  return plan


def _windows_of(example, windows) -> Iterator[dict]:
  """One prepared video's validation windows, its fixation events counted window by window."""
  name = example["name"].decode()
  size = example["frames"].shape[1]
  fix = example["fixations_model"]
  for idx, mask in windows:
    points = [fix[fix[:, 0] == t][:, 1:] for t in idx]
    counts = fixation_counts(points, range(len(idx)), size, size)
    yield {
      "video": name,
      "frames": example["frames"][idx],
      "saliency": example["saliency"][idx],
      "counts": counts,
      "mask": mask,
    }


def _stacked(items: list[dict], batch_size: int) -> ValidationBatch:
  real = len(items)
  while len(items) < batch_size:  # masked copies keep the compiled shape
    items.append({**items[0], "mask": np.zeros_like(items[0]["mask"])})
  columns = {k: np.stack([it[k] for it in items]) for k in ("frames", "saliency", "counts", "mask")}
  return ValidationBatch(videos=[it["video"] for it in items[:real]], real=real, **columns)


def batches(source, plan, batch_size: int) -> Iterator[ValidationBatch]:
  """The plan's windows in order, `batch_size` at a time (the last padded), one video read at a
  time."""
  items: list[dict] = []
  for i, windows in plan:
    for item in _windows_of(source[i], windows):
      items.append(item)
      if len(items) == batch_size:
        yield _stacked(items, batch_size)
        items = []
  if items:
    yield _stacked(items, batch_size)


def _bar(plan, desc: str):
  """A bar of the plan's windows on the first process, below the trainer's, gone when done."""
  from tqdm import tqdm

  return tqdm(
    total=sum(len(windows) for _, windows in plan),
    desc=desc,
    unit="window",
    leave=False,
    position=1,
    file=sys.stderr,
    mininterval=1.0,
    dynamic_ncols=True,
    disable=jax.process_index() != 0,
  )


def place_partner(model, mesh, rules: parallel.ShardingRules):
  """(graphdef, state) of the partner with its weights laid out over the training mesh by the
  trained model's rules; `model` now holds the placed weights, so its one-device copies are freed.
  Without a mesh, as it is."""
  graphdef, state = nnx.split(model)
  if mesh is not None:
    state = parallel.put(state, parallel.state_shardings(state, mesh, rules))
    nnx.update(model, state)
  return graphdef, state


class SpilledMaps:
  """Equal-shaped float32 arrays appended to an unnamed temporary file in `folder` (None: the
  system's), read back one at a time: what stays in memory does not grow with their number, and
  the file goes when this is closed or the process ends, however it ends."""

  def __init__(self, folder: str | None = None):
    import tempfile

    self._file = tempfile.TemporaryFile(dir=folder)
    self._shape, self._count = None, 0

  def append(self, maps: np.ndarray) -> None:
    maps = np.ascontiguousarray(maps, np.float32)
    if self._shape is None:
      self._shape = maps.shape
    if maps.shape != self._shape:
      raise ValueError(f"maps of shape {maps.shape} among ones of {self._shape}")
    self._file.write(maps.tobytes())
    self._file.flush()  # for os.pread
    self._count += 1

  def __len__(self) -> int:
    return self._count

  def __iter__(self) -> Iterator[np.ndarray]:
    return (self[i] for i in range(self._count))

  def __getitem__(self, i: int) -> np.ndarray:
    if not 0 <= i < self._count:
      raise IndexError(i)
    size = int(np.prod(self._shape)) * 4
    data = os.pread(self._file.fileno(), size, i * size)
    return np.frombuffer(data, np.float32).reshape(self._shape)

  def close(self) -> None:
    self._file.close()


def partner_maps(partner, source, plan, batch_size: int, log, mesh=None, rules=None, scratch=None):
  """The fixed partner expert's maps, batch by batch as `batches` yields them (`SpilledMaps` in
  `scratch`): computed once for every validation, each batch split over `mesh` and the partner's
  weights laid out on it as the trained model's are (`place_partner`)."""
  name, model = partner
  graphdef, state = place_partner(model, mesh, rules)
  forward = maps_program(
    graphdef, mesh=mesh, score=lambda maps, _: maps[name], replicate_state=False
  )
  read = stream.prefetch(batches(source, plan, batch_size), PREFETCH)
  maps = SpilledMaps(scratch)
  with _bar(plan, f"validation: {name}'s maps") as bar:
    for batch, out in stream.run_batches(forward, state, read, mesh):
      maps.append(out)
      bar.update(batch.real)
  log(f"validation: {name}'s maps for {len(maps)} batches of windows computed (fused validation)")
  return maps


def _with_partner(read: Iterator[ValidationBatch], maps: SpilledMaps) -> Iterator[ValidationBatch]:
  for batch, partner in zip(read, maps, strict=True):
    yield dataclasses.replace(batch, partner=partner)


def _challenge_metrics(pred, feed) -> dict:
  """{"ntire2026": the challenge's per-frame metrics (B, T), NaN where masked}."""
  gt = feed["saliency"].astype(jnp.float32)
  s = evaluate.frame_metrics(pred, gt, feed["counts"], quantize_uint8=False)["ntire2026"]
  return {"ntire2026": jax.tree.map(lambda v: jnp.where(feed["mask"], v, jnp.nan), s)}


def original_metrics(pred, feed) -> dict:
  """The original's validation numbers of every frame (`metrics`' "original" variant): CC and SIM
  against the ground truth in [0, 1], NSS at the fixation map as the original builds it
  (model-size counts, 3×3 max filter), and whether the frame has fixations. Each (B, T), masked
  frames included."""
  gt = feed["saliency"].astype(jnp.float32) / 255.0
  counts = feed["counts"]
  window = (1,) * (pred.ndim - 2) + (3, 3)
  zero = jnp.zeros((), counts.dtype)
  fix = jax.lax.reduce_window(counts, zero, jax.lax.max, window, (1,) * pred.ndim, "SAME")
  nss = metrics.nss(pred, fix, variant=metrics.ORIGINAL)
  return {
    "cc": metrics.cc(pred, gt, variant=metrics.ORIGINAL),
    "sim": metrics.sim(pred, gt, variant=metrics.ORIGINAL),
    "nss": nss,
    "fixated": jnp.isfinite(nss),
  }


def _score_step(graphdef_eval, name: str, alpha: float, eps: float, metrics, mesh):
  """jit((trainable, stats, frozen), `ValidationBatch.model_input()`) → {name[, "fused"]:
  metrics(map (B, T, S, S), feed)}."""
  from visage_jax.models.visage import logit_fusion

  def scores(model_maps, feed):
    own = model_maps[name]
    maps = {name: own}
    if "partner" in feed:
      pair = (own, feed["partner"]) if name == "expert1" else (feed["partner"], own)
      maps["fused"] = logit_fusion(pair, alpha, eps)
    return {k: metrics(m, feed) for k, m in maps.items()}

  return maps_program(graphdef_eval, mesh=mesh, score=scores, replicate_state=False)


class ChallengeMeans:
  """The challenge's aggregation: the mean over a video's frames, then over videos."""

  def __init__(self):
    self.agg = evaluate.Aggregator()

  def add(self, video: str, scores: dict, mask: np.ndarray) -> None:
    self.agg.add(video, scores, mask)

  def means(self, main: str) -> tuple[dict, int, int]:
    """({map: {metric: value}}, frames `main`'s CC is defined on, videos)."""
    overall = self.agg.report()["overall"]
    maps = {m: o["ntire2026"] for m, o in overall.items() if m != "videos"}
    means = {m: {k: v["challenge"] for k, v in o.items()} for m, o in maps.items()}
    return means, maps[main]["cc"]["frames"], overall["videos"]


class OriginalMeans:
  """The original's aggregation (trainnew.py): every window's mean over its frames weighted by
  their number, so CC and SIM are means over every validated frame; a window's NSS is the mean
  over its frames with fixations (0 when it has none), weighted by all its frames."""

  def __init__(self):
    self.sums, self.frames, self.videos = {}, 0, set()

  def add(self, video: str, scores: dict, mask: np.ndarray) -> None:
    real = int(mask.sum())
    self.frames += real
    self.videos.add(video)
    for name, s in scores.items():
      sums = self.sums.setdefault(name, {"cc": 0.0, "sim": 0.0, "nss": 0.0})
      sums["cc"] += float(np.sum(s["cc"][mask], dtype=np.float64))
      sums["sim"] += float(np.sum(s["sim"][mask], dtype=np.float64))
      fixated = mask & s["fixated"]
      if fixated.any():
        sums["nss"] += real * float(np.mean(s["nss"][fixated], dtype=np.float64))

  def means(self, main: str) -> tuple[dict, int, int]:
    means = {m: {k: v / max(self.frames, 1) for k, v in s.items()} for m, s in self.sums.items()}
    return means, self.frames, len(self.videos)


# train.val_metrics → (the per-frame numbers on the devices, their means on the host)
VARIANTS = {
  "challenge": (_challenge_metrics, ChallengeMeans),
  "original": (original_metrics, OriginalMeans),
}


def _summary(agg, name: str, fused: bool, variant: str) -> dict:
  main = "fused" if fused else name
  means, frames, videos = agg.means(main)
  out = {"map": main, "metrics": variant, **means[main], "frames": frames, "videos": videos}
  if fused:
    out[name] = means[name]
  return out


def make_validator(
  graphdef_eval, cfg, prepared: str, split: str, *, partner=None, mesh=None, scratch=None, log=print
):
  """A function (trainable, stats, frozen) → {"map", "metrics", "cc", "sim", "nss"[, "auc_judd",
  "kld"], "frames", "videos", <expert>: {...}}: "map" is "fused" with a `partner` (name, model),
  else the trained expert's name; "metrics" is `train.val_metrics` (`VARIANTS`): "challenge" (all
  five, per video then over videos) or "original" (CC, SIM, NSS as the original validates).
  Batches hold as many windows as a training micro-batch has clips, split over `mesh` (the
  training mesh, whose processes all validate the same windows); a partner's weights move onto it
  (`place_partner`) and its maps into an unnamed file in `scratch` (`SpilledMaps`)."""
  from visage_jax.data.prepare import data_source

  source, _ = data_source(prepared, split)
  plan = window_plan(source, cfg.model.backbone.num_frames)
  size = cfg.train.batch_size // cfg.train.grad_accum_steps
  fixed = None
  if partner is not None:
    rules = parallel.ShardingRules.from_config(cfg.mesh)
    fixed = partner_maps(partner, source, plan, size, log, mesh, rules, scratch)
  name = expert_name(cfg)
  fusion = float(cfg.model.fusion_alpha), float(cfg.model.fusion_eps)
  variant = cfg.train.val_metrics
  metrics, means_of = VARIANTS[variant]
  step = _score_step(graphdef_eval, name, *fusion, metrics, mesh)

  def validate(trainable, stats, frozen):
    read = stream.prefetch(batches(source, plan, size), PREFETCH)
    if fixed is not None:
      read = _with_partner(read, fixed)
    agg = means_of()
    with _bar(plan, "validation") as bar:
      for batch, scores in stream.run_batches(step, (trainable, stats, frozen), read, mesh):
        for b in range(batch.real):
          agg.add(batch.videos[b], jax.tree.map(lambda x, b=b: x[b], scores), batch.mask[b])
        bar.update(batch.real)
    return _summary(agg, name, fixed is not None, variant)

  return validate
