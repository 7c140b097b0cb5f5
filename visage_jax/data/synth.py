"""A synthetic saliency dataset in exactly one of the layouts of `visage_jax.data.layouts`.

Textured, slowly drifting backgrounds with a few bright moving objects; the ground-truth saliency
follows the objects (a Gaussian on each, weighted, plus a weak centre bias), min-max normalised
per frame; fixations are drawn from that saliency, several observers a frame. Everything follows
from the seed. Videos are H.264 (mp4, or AVI for DHF1K); saliency videos are lossless, map and
fixation images PNG.

    ntire2026:  Videos/<name>.mp4, SaliencyTrain/Train/<name>.mp4 (SaliencyTest/Test),
                FixationsTrain/Train/<name>/fixations.json (FixationsTest/Test), TrainTestSplit.json
    dhf1k:      video/NNN.AVI, annotation/NNNN/{maps,fixation}/NNNN.png; the last videos numbered
                from 601 (validation)
    hollywood2, ucf_sports: {training,testing}/<name>/{images,maps,fixation}/<name>_NNNNN.png
"""

from __future__ import annotations

import json
import os

import numpy as np

from visage_jax.data.encode import write_mp4, write_png
from visage_jax.runtime.files import staged

OBJECT_COLOURS = np.asarray(
  [[255, 60, 40], [40, 230, 255], [255, 230, 30], [230, 40, 255], [60, 255, 90]], np.float32
)


def _background(rng, t, h, w):
  """Smooth colour texture drifting slowly: (T, H, W, 3) float32 in [40, 140]."""
  gh, gw = h // 8 + 3, w // 8 + 3
  coarse = rng.random((gh, gw, 3)).astype(np.float32)
  yy = np.linspace(0, gh - 3, h, dtype=np.float32)
  xx = np.linspace(0, gw - 3, w, dtype=np.float32)
  vy, vx = rng.uniform(-0.03, 0.03, 2)
  out = np.empty((t, h, w, 3), np.float32)
  for i in range(t):
    y = yy + vy * i + 1
    x = xx + vx * i + 1
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    ya, yb = y0 % gh, (y0 + 1) % gh  # the texture wraps around as it drifts
    xa, xb = x0 % gw, (x0 + 1) % gw
    c00 = coarse[ya][:, xa]
    c01 = coarse[ya][:, xb]
    c10 = coarse[yb][:, xa]
    c11 = coarse[yb][:, xb]
    tex = (1 - fy) * ((1 - fx) * c00 + fx * c01) + fy * ((1 - fx) * c10 + fx * c11)
    out[i] = 40 + 100 * tex
  return out


def _trajectories(rng, n, t, h, w):
  """Smooth paths (T, n, 2) in pixels, bouncing inside the frame."""
  pos = np.stack([rng.uniform(0.2 * h, 0.8 * h, n), rng.uniform(0.2 * w, 0.8 * w, n)], -1)
  vel = rng.uniform(-1, 1, (n, 2)) * np.asarray([h, w]) / 40
  out = np.empty((t, n, 2))
  lo, hi = np.asarray([0.1 * h, 0.1 * w]), np.asarray([0.9 * h, 0.9 * w])
  for i in range(t):
    out[i] = pos
    pos = pos + vel
    for d in range(2):
      flip = (pos[:, d] < lo[d]) | (pos[:, d] > hi[d])
      vel[flip, d] *= -1
      pos[:, d] = np.clip(pos[:, d], lo[d], hi[d])
  return out


def make_video(seed: int, frames: int, size: tuple[int, int]):
  """(frames uint8 (T, H, W, 3), saliency uint8 (T, H, W), fixations list of [[y, x], ...])."""
  rng = np.random.default_rng(seed)
  h, w = size
  n = int(rng.integers(1, 4))
  video = _background(rng, frames, h, w)
  paths = _trajectories(rng, n, frames, h, w)
  radius = rng.uniform(0.06, 0.12, n) * min(h, w)
  weight = rng.uniform(0.5, 1.0, n)
  colours = OBJECT_COLOURS[rng.permutation(len(OBJECT_COLOURS))[:n]]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  centre = np.exp(-(((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2) / 2)
  sal = np.empty((frames, h, w), np.float32)
  fixations = []
  for i in range(frames):
    s = 0.05 * centre
    for k in range(n):
      cy, cx = paths[i, k]
      d2 = (yy - cy) ** 2 + (xx - cx) ** 2
      disk = np.clip(radius[k] + 0.5 - np.sqrt(d2), 0, 1)[..., None]
      video[i] = video[i] * (1 - disk) + colours[k] * disk
      s = s + weight[k] * np.exp(-d2 / (2 * (1.2 * radius[k]) ** 2))
    s = (s - s.min()) / (s.max() - s.min())
    sal[i] = s
    p = (s**2).ravel()
    observers = int(rng.integers(8, 20))
    picks = rng.choice(h * w, size=observers, p=p / p.sum())
    fixations.append([[int(q // w), int(q % w)] for q in picks])
  return np.clip(video, 0, 255).astype(np.uint8), np.round(sal * 255).astype(np.uint8), fixations


LAYOUTS = ("ntire2026", "dhf1k", "hollywood2", "ucf_sports")


def write_dataset(
  output: str,
  *,
  layout: str = "ntire2026",
  videos: int = 8,
  frames: int = 90,
  size: tuple[int, int] = (144, 256),
  fps: float = 30.0,
  seed: int = 0,
  test_fraction: float = 0.25,
  progress=None,
) -> dict:
  """Write the dataset to `output` (which must not exist), atomically. Returns {split: names}.
  `progress(done, total)` is called once the arguments are checked, then after each video."""
  output = os.path.abspath(output)
  if os.path.exists(output):
    raise FileExistsError(f"{output}: already exists; choose another --output")
  if layout not in LAYOUTS:
    raise ValueError(f"--layout must be one of {LAYOUTS}, got {layout!r}")
  if videos < 2:
    raise ValueError("--videos must be at least 2 (one to train on, one to test)")
  if frames < 1 or min(size) < 1 or not fps > 0:
    raise ValueError(f"--frames and --size must be ≥ 1 and --fps > 0, got {frames}, {size}, {fps}")
  n_test = max(1, int(round(videos * test_fraction)))
  if layout == "dhf1k" and (videos - n_test > 600 or n_test > 100):
    raise ValueError("DHF1K numbers at most 600 training and 100 validation videos")
  names = _names(layout, videos, n_test)
  if progress:
    progress(0, videos)
  with staged(output, folder=True) as tmp:
    for i, (split, name) in enumerate(names):
      video, sal, fix = make_video(seed * 100_003 + i, frames, size)
      WRITERS[layout](tmp, split, name, video, sal, fix, fps)
      if progress:
        progress(i + 1, videos)
    splits = {}
    for split, name in names:
      splits.setdefault(split, []).append(name)
    if layout == "ntire2026":
      _write_split_file(tmp, splits)
  return splits


def _names(layout: str, videos: int, n_test: int) -> list[tuple[str, str]]:
  """(split, name) of every video, training ones first."""
  train, test = {
    "ntire2026": ("train", "public_test"),
    "dhf1k": ("train", "validation"),
  }.get(layout, ("train", "test"))
  if layout == "dhf1k":
    return [(train, f"{k:03d}") for k in range(1, videos - n_test + 1)] + [
      (test, f"{k:03d}") for k in range(601, 601 + n_test)
    ]
  split_of = [train] * (videos - n_test) + [test] * n_test
  return [(split, f"synth_{i:03d}") for i, split in enumerate(split_of)]


def _write_ntire(root, split, name, video, sal, fix, fps):
  train = split == "train"
  sal_dir = os.path.join(root, "SaliencyTrain/Train" if train else "SaliencyTest/Test")
  fix_dir = os.path.join(root, "FixationsTrain/Train" if train else "FixationsTest/Test", name)
  for d in (os.path.join(root, "Videos"), sal_dir, fix_dir):
    os.makedirs(d, exist_ok=True)
  write_mp4(os.path.join(root, "Videos", name + ".mp4"), video, fps, crf=12)
  write_mp4(os.path.join(sal_dir, name + ".mp4"), sal, fps, lossless=True)
  with open(os.path.join(fix_dir, "fixations.json"), "w") as f:
    json.dump(fix, f)


def _write_split_file(root, splits):
  listed = {s: [n + ".mp4" for n in splits.get(s, [])] for s in ("train", "public_test")}
  with open(os.path.join(root, "TrainTestSplit.json"), "w") as f:
    json.dump({**listed, "private_test": []}, f, indent=1)


def _write_annotation(folder, sal, fix, name_of):
  """maps/ and fixation/ PNGs (binary: 255 where any observer looked) under `folder`."""
  for sub in ("maps", "fixation"):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  for i, points in enumerate(fix):
    write_png(os.path.join(folder, "maps", name_of(i)), sal[i])
    binary = np.zeros(sal.shape[1:], np.uint8)
    for y, x in points:
      binary[y, x] = 255
    write_png(os.path.join(folder, "fixation", name_of(i)), binary)


def _write_dhf1k(root, split, name, video, sal, fix, fps):
  del split  # the number says it
  os.makedirs(os.path.join(root, "video"), exist_ok=True)
  write_mp4(os.path.join(root, "video", name + ".AVI"), video, fps, crf=12)
  folder = os.path.join(root, "annotation", f"{int(name):04d}")
  _write_annotation(folder, sal, fix, lambda i: f"{i + 1:04d}.png")


def _write_clip(root, split, name, video, sal, fix, fps):
  del fps  # frame folders carry none
  clip = os.path.join(root, {"train": "training", "test": "testing"}[split], name)
  os.makedirs(os.path.join(clip, "images"))
  for i, frame in enumerate(video):
    write_png(os.path.join(clip, "images", f"{name}_{i + 1:05d}.png"), frame)
  _write_annotation(clip, sal, fix, lambda i: f"{name}_{i + 1:05d}.png")


WRITERS = {
  "ntire2026": _write_ntire,
  "dhf1k": _write_dhf1k,
  "hollywood2": _write_clip,
  "ucf_sports": _write_clip,
}
