"""The host's per-frame work of `visage-predict` stage by stage, in milliseconds per frame on one
thread, with the previous implementation of each stage beside the current one in the same run.

At a given source size: the fused map (model size) to an 8-bit map at source size, its PNG, the
overlay frame, each x264 stream's frame in its pixel format (made on the writer threads) and its
encoding (on the stream's own thread), and the input side (decoding is not included; the resize
to the model's input is). "previous" is what the writers did before (the resize to the source
size and the quantisation on the host, whole-frame passes for the overlay, PIL's PNG encoder at
level 1, the gray map converted as an RGB frame); the 8-bit map is now made on the device and
only its unsure pixels settled on the host (`metrics.maps.device_levels`, `settle_levels`: the
host's share is timed; "device_levels_ms" is the device's share on this backend). The outputs
are checked equal (pixels, YUV samples) before timing.

    python benchmarks/writer_stages.py [--size=1920x1080] [--repeats=20]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def ms_per_call(fn, repeats: int) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return round((time.perf_counter() - start) / repeats * 1000, 2)


def pil_png(path, pixels) -> None:
  from PIL import Image

  Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def previous_overlay_lookup(frame, levels) -> np.ndarray:
  """The overlay lookup as it was: int32 indices over the whole frame at once."""
  from visage_jax.inference import writers

  table = writers._overlay_table()
  base = np.asarray(levels, np.int32) << 8
  out = np.empty(frame.shape, np.uint8)
  for c in range(3):
    np.take(table[c], base + frame[..., c], out=out[..., c])
  return out


def previous_maps_frame(gray):
  """The lossless stream's frame as it was made: the map as an RGB frame, converted by swscale."""
  import av

  rgb = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=-1), format="rgb24")
  return rgb.reformat(format="yuv444p")


def inputs(h: int, w: int):
  """A smooth fused map at model size (as the model gives) and a textured source frame."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:224, 0:224] / 224
  fused = np.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) / 0.05) + 0.02 * rng.random((224, 224))
  frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return np.clip(fused, 0, 1).astype(np.float32), frame


def on_device(fused, hw):
  """`device_levels` of one map, jitted as `visage-predict` runs it: (levels, unsure bits)."""
  return tuple(np.asarray(a) for a in _device_levels(hw)(fused))


def _device_levels(hw):
  import jax

  from visage_jax.metrics import maps

  return jax.jit(lambda m: maps.device_levels(m, hw))


def check_equal(fused, frame, hw, png_path) -> None:
  from PIL import Image

  from visage_jax.data import encode
  from visage_jax.inference import writers
  from visage_jax.metrics import maps

  at_source = maps.resized_uint8(fused, hw)
  assert np.array_equal(
    at_source, maps.map_to_uint8(maps.resize_linear(np.asarray(fused, np.float64), hw))
  )
  assert np.array_equal(maps.settle_levels(*on_device(fused, hw), fused), at_source)
  lookup = writers.overlay_lookup(frame, at_source)
  assert np.array_equal(lookup, previous_overlay_lookup(frame, at_source))
  encode.write_png(png_path, at_source)
  with open(png_path, "rb") as f:
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(f.read()))), at_source)
  maps_frame = encode.video_frame(at_source, encode.LOSSLESS_FORMAT).to_ndarray()
  assert np.array_equal(maps_frame, previous_maps_frame(at_source).to_ndarray())


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", default="1920x1080", help="source WxH")
  ap.add_argument("--repeats", type=int, default=20)
  args = ap.parse_args()

  from visage_jax.data import encode
  from visage_jax.data.video import resize_frames
  from visage_jax.inference import writers
  from visage_jax.metrics import maps

  w, h = (int(x) for x in args.size.split("x"))
  fused, frame = inputs(h, w)
  tmp = tempfile.mkdtemp(prefix="writer_stages_")
  png = os.path.join(tmp, "m.png")
  check_equal(fused, frame, (h, w), png)
  at_source = maps.resized_uint8(fused, (h, w))
  r = args.repeats
  levels, unsure = on_device(fused, (h, w))
  device = _device_levels((h, w))
  device_ms = ms_per_call(lambda: device(fused)[0].block_until_ready(), r)
  stages = {
    "map_to_source_uint8": (
      ms_per_call(lambda: maps.resized_uint8(fused, (h, w)), r),
      ms_per_call(lambda: maps.settle_levels(levels, unsure, fused), r),
    ),
    "png": (
      ms_per_call(lambda: pil_png(png, at_source), r),
      ms_per_call(lambda: encode.write_png(png, at_source), r),
    ),
    "overlay": (
      ms_per_call(lambda: previous_overlay_lookup(frame, at_source), r),
      ms_per_call(lambda: writers.overlay_lookup(frame, at_source), r),
    ),
    "maps_mp4_frame": (
      ms_per_call(lambda: previous_maps_frame(at_source), r),
      ms_per_call(lambda: encode.video_frame(at_source, encode.LOSSLESS_FORMAT), r),
    ),
  }
  sizes = {"png_bytes_previous": 0, "png_bytes": 0}
  pil_png(png, at_source)
  sizes["png_bytes_previous"] = os.path.getsize(png)
  encode.write_png(png, at_source)
  sizes["png_bytes"] = os.path.getsize(png)
  lossless = encode.Mp4Encoder(os.path.join(tmp, "maps.mp4"), 30, h, w, lossless=True)
  overlay = encode.Mp4Encoder(os.path.join(tmp, "o.mp4"), 30, h, w, preset="ultrafast")
  maps_frame = encode.video_frame(at_source, encode.LOSSLESS_FORMAT)
  overlay_frame = encode.video_frame(frame, encode.VIEWING_FORMAT)
  unchanged = {
    "overlay_mp4_frame": ms_per_call(lambda: encode.video_frame(frame, encode.VIEWING_FORMAT), r),
    "encode_maps_lossless": ms_per_call(lambda: lossless.add_frame(maps_frame), r),
    "encode_overlay": ms_per_call(lambda: overlay.add_frame(overlay_frame), r),
    "input_resize_to_224": ms_per_call(lambda: resize_frames(frame[None], 224), r),
  }
  lossless.close()
  overlay.close()
  record = {
    "machine": f"{len(os.sched_getaffinity(0))} CPU cores",
    "size": args.size,
    "ms_per_frame": {
      k: {"previous": a, "now": b, "speedup": round(a / b, 2)} for k, (a, b) in stages.items()
    },
    "ms_per_frame_unchanged": unchanged,
    "device_levels_ms": device_ms,
    "unsure_pixels": int(np.unpackbits(unsure).sum()),
    **sizes,
  }
  before = sum(a for a, _ in stages.values()) + sum(unchanged.values())
  after = sum(b for _, b in stages.values()) + sum(unchanged.values())
  record["total_ms_per_frame"] = {"previous": round(before, 1), "now": round(after, 1)}
  print(json.dumps(record))


if __name__ == "__main__":
  main()
