"""`visage-eval`: score a converted (or trained) checkpoint on a challenge-layout dataset.

    visage-eval --checkpoint=DIR --data=ROOT --split=public_test --output=OUT [--save_maps]

Every frame of every video is predicted once (the original's interleaved windows) and scored at
the ground truth's resolution with the challenge's pipeline, for Expert 1, Expert 2 and the fused
map, in both metric variants. Writes OUT/metrics.json and prints the headline table; with
--save_maps also OUT/predictions/<video>/eyeMap_%05d.png (8-bit fused maps at the video's
resolution) and OUT/predictions/<video>.mp4, as a submission expects them.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("checkpoint", None, "A visage-convert output (or a trained checkpoint)")
flags.DEFINE_string("data", None, "Dataset root in the challenge layout")
flags.DEFINE_string("split", "public_test", "train, public_test or private_test")
flags.DEFINE_string("output", None, "Output directory")
flags.DEFINE_bool("save_maps", False, "Also write the fused maps as a submission")
flags.DEFINE_integer("batch_size", 2, "Windows per step")
flags.DEFINE_integer("stride", 0, "Source frames per model frame (0: round(fps / 5))")
flags.DEFINE_string("dtype", None, "Override the backbone's activation dtype (e.g. bfloat16)")
flags.DEFINE_bool("quantize_uint8", True, "Score the maps as 8-bit images, as a submission is")
flags.DEFINE_integer("max_videos", 0, "Evaluate only the first N videos (0: all)")
FLAGS = flags.FLAGS


def _fail(msg: str):
  print(f"visage-eval: error: {msg}", file=sys.stderr)
  sys.exit(2)


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
  from visage_jax import evaluate, writers
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
  step = evaluate.make_eval_step(
    graphdef, quantize_uint8=quantize_uint8, return_submission=save_maps
  )
  size = cfg.model.backbone.img_size
  window = cfg.model.backbone.num_frames
  os.makedirs(output, exist_ok=True)
  pred_root = os.path.join(output, "predictions")
  agg = evaluate.Aggregator()
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
  evaluate.write_json(os.path.join(output, "metrics.json"), result)
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


def main(_):
  from absl import logging

  from visage_jax import evaluate
  from visage_jax.checkpoint import CheckpointError
  from visage_jax.data.challenge import DataError
  from visage_jax.data.video import VideoError

  logging.set_verbosity(logging.WARNING)
  for name in ("checkpoint", "data", "output"):
    if not getattr(FLAGS, name):
      _fail(f"--{name} is required")
  try:
    result = evaluate_dataset(
      FLAGS.checkpoint,
      FLAGS.data,
      FLAGS.split,
      FLAGS.output,
      save_maps=FLAGS.save_maps,
      batch_size=FLAGS.batch_size,
      stride=FLAGS.stride,
      dtype=FLAGS.dtype,
      quantize_uint8=FLAGS.quantize_uint8,
      max_videos=FLAGS.max_videos,
    )
  except (DataError, VideoError, CheckpointError) as e:
    _fail(str(e))
  print(evaluate.format_table(result, "ntire2026"))
  print()
  print(evaluate.format_table(result, "mit"))
  print(f"\nwrote {os.path.join(FLAGS.output, 'metrics.json')}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
