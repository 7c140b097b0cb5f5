"""Images and videos written: 8-bit PNGs (`write_png`) and H.264 mp4s (`Mp4Encoder`,
`write_mp4`), made here rather than through PIL or PyAV's own conversions where that is faster
with the same bytes. The map files of `visage-predict` and the videos of `visage-synth` both
come from here."""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np
from zlib_ng import zlib_ng


def uint8_image(image_u8, where: str) -> np.ndarray:
  """The pixels of an 8-bit (H, W) gray or (H, W, 3) RGB image; else a ValueError naming `where`."""
  img = np.asarray(image_u8, np.uint8)
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or not img.size:
    raise ValueError(f"{where}: expected (H, W) or (H, W, 3) uint8 pixels, got {img.shape}")
  return img


def write_png(path: str, image_u8) -> None:
  """An 8-bit grayscale (H, W) or RGB (H, W, 3) PNG, written here rather than through PIL: every
  row with PNG's "Sub" filter (each byte minus the same channel of the pixel to its left), then
  deflate with Huffman coding only. A filtered saliency map is mostly small differences, which
  entropy coding alone packs tighter and faster than zlib's fastest string matching (1080p map:
  338 KB in 12.8 ms against 417 KB in 16 ms at level 1; PIL's level 1, which tries five filters
  on every row: 420 KB in 31 ms). The deflate is zlib-ng's: the same bytes as zlib's for this
  coding, in half the time (13.8 → 6.3-7.2 ms). zlib-ng and numpy release the GIL while they
  work. PNG is lossless: the pixels are the array's whatever the filter and coding."""
  img = uint8_image(image_u8, path)
  h, w = img.shape[:2]
  channels = 1 if img.ndim == 2 else 3
  rows = img.reshape(h, w * channels)
  filtered = np.empty((h, 1 + w * channels), np.uint8)
  filtered[:, 0] = 1  # filter type Sub
  filtered[:, 1 : 1 + channels] = rows[:, :channels]
  np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, 1 + channels :])
  header = struct.pack(">IIBBBBB", w, h, 8, 0 if channels == 1 else 2, 0, 0, 0)
  coder = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_HUFFMAN_ONLY)
  data = coder.compress(filtered.tobytes()) + coder.flush()
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
    for tag, body in ((b"IHDR", header), (b"IDAT", data), (b"IEND", b"")):
      f.write(struct.pack(">I", len(body)) + tag + body)
      f.write(struct.pack(">I", zlib.crc32(tag + body)))


TICKS = 90_000  # a variable-rate video's timestamps: ticks a second (MPEG's clock)
LOSSLESS_FORMAT = "yuv444p"  # x264's lossless mode keeps every sample in 4:4:4
VIEWING_FORMAT = "yuv420p"  # what every player reads


def video_frame(frame_u8, pix_fmt: str):
  """uint8 (H, W) gray or (H, W, 3) RGB → an `av.VideoFrame` in `pix_fmt`: the conversion PyAV's
  encoder would otherwise make itself (swscale), made apart from it so that it can run on any
  thread. yuv420p needs even sizes: odd ones are padded by repeating the last row/column. A gray
  frame goes into yuv444p through a table of swscale's own conversion of each gray level: the
  same bytes as converting the gray frame as RGB, without building that frame (3.6× at 1080p)."""
  import av

  f = uint8_image(frame_u8, "video frame")
  if f.ndim == 2 and pix_fmt == LOSSLESS_FORMAT:
    return _gray_in_yuv444(f)
  if f.ndim == 2:
    f = np.repeat(f[..., None], 3, axis=-1)
  if pix_fmt == VIEWING_FORMAT and (f.shape[0] % 2 or f.shape[1] % 2):
    f = np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge")
  h, w, _ = f.shape
  rgb = av.VideoFrame(w, h, "rgb24")
  # numpy's copy releases the GIL; PyAV's from_ndarray copies row by row holding it (0.7 ms at
  # 1080p, with the same bytes)
  _plane(rgb, 0, h, 3 * w)[:] = f.reshape(h, 3 * w)
  return rgb.reformat(format=pix_fmt)


def _plane(frame, index: int, rows: int, row_bytes: int) -> np.ndarray:
  """Plane `index` of an `av.VideoFrame`, a writable uint8 (rows, row_bytes) view of its buffer
  (whose rows may be padded to a longer line size)."""
  plane = frame.planes[index]
  return np.frombuffer(plane, np.uint8).reshape(rows, plane.line_size)[:, :row_bytes]


@functools.cache
def _gray_yuv444_levels() -> np.ndarray:
  """uint8 (3, 256): the yuv444p samples swscale makes of RGB gray level g, in column g."""
  import av

  ramp = np.tile(np.arange(256, dtype=np.uint8), (2, 1))
  rgb = av.VideoFrame.from_ndarray(np.repeat(ramp[..., None], 3, -1), format="rgb24")
  return np.ascontiguousarray(rgb.reformat(format=LOSSLESS_FORMAT).to_ndarray()[:, 0])


def _gray_in_yuv444(gray: np.ndarray):
  import av

  h, w = gray.shape
  frame = av.VideoFrame(w, h, LOSSLESS_FORMAT)
  for index, levels in enumerate(_gray_yuv444_levels()):
    samples = _plane(frame, index, h, w)
    if (levels == levels[0]).all():  # chroma: one value for every gray level
      samples.fill(levels[0])
    else:
      np.take(levels, gray, out=samples)
  return frame


class Mp4Encoder:
  """H.264 mp4 written one frame at a time: `add(frame)` uint8 (H, W) or (H, W, 3), `close()`;
  or `add_frame` with a frame `video_frame` made in `pix_fmt` beforehand (on another thread).

  `lossless` uses x264's lossless mode in 4:4:4, so a grayscale map decodes back exactly (up to
  the YUV↔RGB conversion of the reader); the preset then only trades file size for speed, so the
  fastest is used. Otherwise yuv420p at `crf` with `preset`, which every player reads; odd sizes
  are padded by repeating the last row/column (yuv420p needs even sizes).

  `times` (seconds, one per frame) gives a variable frame rate: each frame is shown when the
  source's was (to 1/90000 s); without it the frames are `fps` apart.
  """

  def __init__(
    self, path, fps, height, width, *, crf=18, lossless=False, preset="medium", times=None
  ):
    import fractions

    import av

    self.path, self.height, self.width = path, height, width
    self.pix_fmt = LOSSLESS_FORMAT if lossless else VIEWING_FORMAT
    self.frames = 0
    rate = fractions.Fraction(fps).limit_denominator(1001)
    container = "avi" if path.lower().endswith(".avi") else "mp4"  # AVI: as DHF1K ships
    self._container = av.open(path, mode="w", format=container)
    stream = self._container.add_stream("libx264", rate=rate)
    stream.width = width + (0 if lossless else width % 2)
    stream.height = height + (0 if lossless else height % 2)
    stream.pix_fmt = self.pix_fmt
    if lossless:
      stream.options = {"qp": "0", "preset": "ultrafast"}
    else:
      stream.options = {"crf": str(crf), "preset": preset}
    stream.time_base = 1 / rate
    self._ticks = None
    if times is not None:  # the source's timestamps, in ticks of 1/90000 s
      stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, TICKS)
      self._ticks = np.rint((np.asarray(times) - times[0]) * TICKS).astype(np.int64)
    self._stream = stream

  def add(self, frame_u8) -> None:
    f = np.asarray(frame_u8)
    if f.shape not in ((self.height, self.width), (self.height, self.width, 3)):
      raise ValueError(
        f"{self.path}: frame of shape {f.shape}, the video is {self.height}×{self.width}"
      )
    self.add_frame(video_frame(f, self.pix_fmt))

  def add_frame(self, frame) -> None:
    s = self._stream
    if frame.format.name != self.pix_fmt or (frame.height, frame.width) != (s.height, s.width):
      raise ValueError(
        f"{self.path}: a {frame.format.name} frame of {frame.height}×{frame.width}, the video is "
        f"{self.pix_fmt} {s.height}×{s.width}"
      )
    frame.pts = self.frames if self._ticks is None else int(self._ticks[self.frames])
    self.frames += 1
    for packet in s.encode(frame):
      self._container.mux(packet)

  def close(self) -> None:
    try:
      for packet in self._stream.encode():
        self._container.mux(packet)
    finally:
      self._container.close()


def write_mp4(path: str, frames, fps: float, *, crf: int = 18, lossless: bool = False) -> None:
  """uint8 frames (N, H, W) or (N, H, W, 3) → H.264 mp4 at `fps`, one video frame per array frame
  (see `Mp4Encoder`)."""
  frames = np.asarray(frames, np.uint8)
  if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3) or not len(frames):
    raise ValueError(f"{path}: expected (N, H, W[, 3]) uint8 frames, got {frames.shape}")
  encoder = Mp4Encoder(path, fps, frames.shape[1], frames.shape[2], crf=crf, lossless=lossless)
  try:
    for f in frames:
      encoder.add(f)
  finally:
    encoder.close()
