"""`visage-demo`: everything, small, on a laptop-sized CPU, in a few minutes.

    visage-demo [--output=visage_demo]

1. writes a synthetic dataset in the challenge layout (`visage-synth`) and prepares it;
2. trains the `tiny` model (at 84×84, 4 frames, from a random backbone: no download) with the
   real trainer on two emulated CPU devices, data-parallel: Expert 1 in stage 1, then Expert 2 in
   stage 1 validated fused against it;
3. exports both experts into one checkpoint (`visage-export`);
4. evaluates it on the held-out videos with the jitted evaluation step (`visage-eval`: every
   frame, the challenge's scoring at the ground truth's resolution) and scores a centre prior
   the same way;
5. predicts the held-out videos (`visage-predict`): maps, map videos, overlay videos;
6. writes OUTPUT/metrics.json ({"model": {...}, "center_prior": {...}}, fused map, challenge
   variant), OUTPUT/overlay.mp4 and OUTPUT/contact_sheet.png (frames, ground truth and
   prediction side by side).

OUTPUT is replaced if it holds an earlier demo (it is refused if it holds anything else).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import flags

from visage_jax.cli import check_output, fail, run_app

flags.DEFINE_string("output", "visage_demo", "Where everything goes")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and the training")
flags.DEFINE_integer("devices", 2, "Emulated CPU devices for the trainer (data parallel)")
flags.DEFINE_integer("steps1", 60, "Training steps of Expert 1")
flags.DEFINE_integer("steps2", 40, "Training steps of Expert 2")
FLAGS = flags.FLAGS

MARKER = ".visage-demo"
SIZE, FRAMES = 84, 4
HEADLINE = ("cc", "sim", "nss", "auc_judd")


def _say(msg: str) -> None:
  print(f"[visage-demo] {msg}", flush=True)


def _prepare_output(out: str) -> None:
  if os.path.isdir(out):
    if not os.path.isfile(os.path.join(out, MARKER)):
      fail("visage-demo", f"{out} exists and is not an earlier demo; choose another --output")
    shutil.rmtree(out)
  else:
    check_output("visage-demo", out)  # a file there, or a place that cannot be written
  os.makedirs(out)
  open(os.path.join(out, MARKER), "w").close()


def _config(expert: int, steps: int, prep: str, seed: int):
  from configs.visage import get_config

  cfg = get_config("tiny")
  b = cfg.model.backbone
  b.img_size, b.num_frames = SIZE, FRAMES
  cfg.model.output_size = SIZE
  t = cfg.train
  t.expert, t.stage, t.num_steps, t.batch_size, t.seed = expert, 1, steps, 4, seed
  # the tiny decoders are ~100× smaller than the 6B recipe's, and the run is short
  t.lr_decoder_stage1 = 1e-3
  t.eval_every, t.checkpoint_every, t.log_every = 0, steps, 10
  cfg.data.dir, cfg.data.val_split = prep, "public_test"
  return cfg


def center_prior_scores(data: str, split: str, size: int) -> dict:
  """The challenge-variant metrics of a centre prior (a Gaussian with σ = a quarter of each side,
  at the model's output size, read as an 8-bit submission map exactly as the model's maps are)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from visage_jax.data import challenge, layouts
  from visage_jax.data.video import to_gray
  from visage_jax.evaluation import evaluate

  y = (np.arange(size) + 0.5) / size - 0.5
  g = np.exp(-(y[:, None] ** 2 + y[None, :] ** 2) / (2 * 0.25**2)).astype(np.float32)

  @jax.jit
  def score(prior, gt, counts):  # the prior an argument: as a constant XLA folds it, slowly
    prior = jnp.broadcast_to(prior, (gt.shape[0], size, size))
    return evaluate.frame_metrics(prior, gt.astype(jnp.float32), counts)

  agg = evaluate.Aggregator()
  for entry in challenge.ChallengeLayout(data).entries(split):
    video, sal, points = layouts.open_entry(entry)
    idx = np.arange(video.num_frames)
    gt = to_gray(sal.frames(idx))
    counts = challenge.fixation_counts(points, idx, video.height, video.width)
    m = jax.device_get(score(g, gt, counts))
    agg.add(entry.name, {"center_prior": m}, np.ones(len(idx), bool))
  overall = agg.report()["overall"]["center_prior"]["ntire2026"]
  return {k: overall[k]["challenge"] for k in HEADLINE}


def contact_sheet(path: str, video_path: str, gt_path: str, maps_dir: str, rows: int = 4) -> None:
  """A PNG: one row per sampled frame with the frame, the ground truth and the prediction (both
  as heat maps over the frame)."""
  import numpy as np
  from PIL import Image, ImageDraw

  from visage_jax.data.video import open_video, to_gray
  from visage_jax.inference import writers

  video, sal = open_video(video_path), open_video(gt_path)
  n = video.num_frames
  picks = np.linspace(0, n - 1, rows + 2).round().astype(int)[1:-1]
  frames, gts = video.frames(picks), to_gray(sal.frames(picks))
  h, w = frames.shape[1:3]
  zoom = max(1, 256 // w)  # small synthetic frames are shown larger
  pad, head = 4, 18
  ch, cw = h * zoom, w * zoom
  sheet = np.full((head + rows * (ch + pad) + pad, 3 * (cw + pad) + pad, 3), 255, np.uint8)
  for r, (i, frame, gt) in enumerate(zip(picks, frames, gts)):
    pred = np.asarray(Image.open(os.path.join(maps_dir, writers.map_filename(int(i)))))
    cells = [frame, writers.overlay(frame, gt), writers.overlay(frame, pred)]
    for c, cell in enumerate(cells):
      y0, x0 = head + pad + r * (ch + pad), pad + c * (cw + pad)
      sheet[y0 : y0 + ch, x0 : x0 + cw] = np.repeat(np.repeat(cell, zoom, 0), zoom, 1)
  image = Image.fromarray(sheet)
  draw = ImageDraw.Draw(image)
  for c, title in enumerate(("frame", "ground truth", "prediction (fused)")):
    draw.text((pad + c * (cw + pad) + 2, 3), title, fill=(0, 0, 0))
  image.save(path)


def main(_):
  # The trainer's mesh is made of emulated CPU devices; JAX reads this when it starts.
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FLAGS.devices}"
  )
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  start = time.time()
  out = os.path.abspath(FLAGS.output)
  _prepare_output(out)
  lap = lambda: f"{(time.time() - start) / 60:.1f} min"  # noqa: E731

  data, prep = _make_data(out, lap)
  checkpoint = _train_and_export(out, prep, lap)
  model, prior = _evaluate(checkpoint, data, out, lap)
  pred_dir, videos = _predict(checkpoint, data, out)
  _report(out, model, prior, videos, minutes=(time.time() - start) / 60)
  _say(
    f"done in {lap()}: {out}/metrics.json, {out}/overlay.mp4, {out}/contact_sheet.png, "
    f"maps in {pred_dir}, checkpoint in {checkpoint}"
  )
  sys.stdout.flush()


def _make_data(out: str, lap) -> tuple[str, str]:
  """Step 1: the synthetic dataset and its prepared form: (data, prepared)."""
  import jax

  from visage_jax.data.prepare import prepare
  from visage_jax.data.synth import write_dataset

  data, prep = os.path.join(out, "data"), os.path.join(out, "prepared")
  split = write_dataset(data, videos=12, frames=90, size=(72, 128), seed=FLAGS.seed)
  prepare("ntire2026", data, prep, size=SIZE)
  _say(
    f"synthetic data: {len(split['train'])} training and {len(split['public_test'])} held-out "
    f"videos in {data} ({lap()}); {jax.device_count()} {jax.default_backend()} devices"
  )
  return data, prep


def _train_and_export(out: str, prep: str, lap) -> str:
  """Steps 2 and 3: Expert 1, then Expert 2 validated fused against it, exported together."""
  from visage_jax.training import loop as trainer
  from visage_jax.training import weights as provenance
  from visage_jax.training.checks import check_run

  quiet = lambda m: None  # noqa: E731  (the trainer's progress bar still shows)
  w1, w2 = os.path.join(out, "train_expert1"), os.path.join(out, "train_expert2")
  r1 = trainer.run(check_run(_config(1, FLAGS.steps1, prep, FLAGS.seed), w1), log=quiet)
  v1 = _last_validation(w1)
  _say(f"Expert 1 trained, {r1['step']} steps: validation CC {v1['cc']:.3f} ({lap()})")
  cfg2 = _config(2, FLAGS.steps2, prep, FLAGS.seed)
  cfg2.train.init = os.path.join(w1, trainer.INIT_DIR)  # the same backbone
  cfg2.train.partner = w1
  r2 = trainer.run(check_run(cfg2, w2), log=quiet)
  v2 = _last_validation(w2)
  _say(
    f"Expert 2 trained, {r2['step']} steps: validation CC {v2['expert2']['cc']:.3f}, "
    f"fused {v2['cc']:.3f} ({lap()})"
  )
  checkpoint = os.path.join(out, "checkpoint")
  provenance.export([w1, w2], checkpoint, log=quiet)
  return checkpoint


def _last_validation(workdir: str) -> dict:
  with open(os.path.join(workdir, "validation.jsonl")) as f:
    return json.loads(f.readlines()[-1])


def _evaluate(checkpoint: str, data: str, out: str, lap) -> tuple[dict, dict]:
  """Step 4: the headline metrics of the fused map and of a centre prior: (model, prior)."""
  from visage_jax.evaluation.evaluate import evaluate_dataset

  result = evaluate_dataset(checkpoint, data, "public_test", os.path.join(out, "eval"))
  fused = result["overall"]["fused"]["ntire2026"]
  model = {k: fused[k]["challenge"] for k in HEADLINE}
  prior = center_prior_scores(data, "public_test", SIZE)
  _say(f"evaluated on the held-out videos ({lap()})")
  return model, prior


def _predict(checkpoint: str, data: str, out: str) -> tuple[str, list]:
  """Step 5, and the overlay and contact sheet of the first held-out video: (the predictions'
  folder, the held-out videos)."""
  from visage_jax.data import challenge
  from visage_jax.inference import Predictor
  from visage_jax.inference.predict import run_settings, write_video_outputs

  predictor = Predictor.load(checkpoint)
  pred_dir = os.path.join(out, "predictions")
  os.makedirs(pred_dir, exist_ok=True)
  entries = challenge.ChallengeLayout(data).entries("public_test")
  for entry in entries:
    write_video_outputs(
      predictor, entry.video, pred_dir, settings=run_settings(checkpoint), batch_size=2
    )
  first = entries[0]
  shutil.copyfile(
    os.path.join(pred_dir, "overlays", first.name + ".mp4"), os.path.join(out, "overlay.mp4")
  )
  contact_sheet(
    os.path.join(out, "contact_sheet.png"),
    first.video,
    first.saliency,
    os.path.join(pred_dir, first.name),
  )
  return pred_dir, entries


def _report(out: str, model: dict, prior: dict, videos: list, *, minutes: float) -> None:
  """Step 6: OUTPUT/metrics.json and the table of the model against the centre prior."""
  from visage_jax.evaluation.evaluate import write_json

  beats = {k: model[k] > prior[k] for k in ("cc", "nss")}
  write_json(
    os.path.join(out, "metrics.json"),
    {
      "model": model,
      "center_prior": prior,
      "map": "fused",
      "variant": "ntire2026 (challenge): per-video means, then the mean over videos",
      "videos": len(videos),
      "model_beats_center_prior": beats,
      "minutes": round(minutes, 2),
    },
  )
  print(f"\n{'':<14}" + "".join(f"{k:>10}" for k in HEADLINE))
  for name, row in (("model (fused)", model), ("centre prior", prior)):
    print(f"{name:<14}" + "".join(f"{row[k]:>10.4f}" for k in HEADLINE))
  verdict = "beats" if all(beats.values()) else "does NOT beat"
  _say(f"the trained model {verdict} the centre prior on CC and NSS")


def run():
  run_app(main, "visage-demo")


if __name__ == "__main__":
  run()
