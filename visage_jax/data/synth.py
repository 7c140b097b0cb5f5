"""A synthetic saliency dataset in exactly the challenge layout (METRICS.md).

Textured, slowly drifting backgrounds with a few bright moving objects; the ground-truth saliency
follows the objects (a Gaussian on each, weighted, plus a weak centre bias), min-max normalised
per frame; fixations are drawn from that saliency, several observers a frame. Everything follows
from the seed. Videos are H.264 mp4; the saliency videos are lossless.

    ROOT/Videos/<name>.mp4
    ROOT/SaliencyTrain/Train/<name>.mp4,  ROOT/SaliencyTest/Test/<name>.mp4
    ROOT/FixationsTrain/Train/<name>/fixations.json  (and FixationsTest/Test)
    ROOT/TrainTestSplit.json  {"train": [...], "public_test": [...], "private_test": [...]}
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from visage_jax.writers import write_mp4

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


def write_dataset(
  output: str,
  *,
  videos: int = 8,
  frames: int = 90,
  size: tuple[int, int] = (144, 256),
  fps: float = 30.0,
  seed: int = 0,
  test_fraction: float = 0.25,
  progress=None,
) -> dict:
  """Write the dataset to `output` (which must not exist), atomically. Returns the split."""
  output = os.path.abspath(output)
  if os.path.exists(output):
    raise FileExistsError(f"{output}: already exists; choose another --output")
  if videos < 2:
    raise ValueError("--videos must be at least 2 (one to train on, one to test)")
  names = [f"synth_{i:03d}" for i in range(videos)]
  n_test = max(1, int(round(videos * test_fraction)))
  split = {
    "train": [n + ".mp4" for n in names[:-n_test]],
    "public_test": [n + ".mp4" for n in names[-n_test:]],
    "private_test": [],
  }
  tmp = f"{output}.partial-{os.getpid()}"
  try:
    for sub in (
      "Videos",
      "SaliencyTrain/Train",
      "SaliencyTest/Test",
      "FixationsTrain/Train",
      "FixationsTest/Test",
    ):
      os.makedirs(os.path.join(tmp, sub))
    for i, name in enumerate(names):
      train = name + ".mp4" in split["train"]
      video, sal, fix = make_video(seed * 100_003 + i, frames, size)
      write_mp4(os.path.join(tmp, "Videos", name + ".mp4"), video, fps, crf=12)
      sal_dir = "SaliencyTrain/Train" if train else "SaliencyTest/Test"
      write_mp4(os.path.join(tmp, sal_dir, name + ".mp4"), sal, fps, lossless=True)
      fix_dir = os.path.join(tmp, "FixationsTrain/Train" if train else "FixationsTest/Test", name)
      os.makedirs(fix_dir)
      with open(os.path.join(fix_dir, "fixations.json"), "w") as f:
        json.dump(fix, f)
      if progress:
        progress(i + 1, videos)
    with open(os.path.join(tmp, "TrainTestSplit.json"), "w") as f:
      json.dump(split, f, indent=1)
    os.rename(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return split
