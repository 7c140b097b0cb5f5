"""Reading video frames: a small interface, decord behind it, guarded against hangs.

Every failure becomes a `VideoError` naming the file (and the frame where one is involved).
Frames come out as uint8 (N, H, W, 3) RGB at the source resolution, turned as a player shows them
(`Orientation`: a video's display matrix, an image's EXIF tag); `resize_frames` and `normalize`
turn them into model input exactly as the original's torchvision transform does.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from typing import Protocol

import numpy as np

CLIP_MEAN = np.asarray((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.asarray((0.26862954, 0.26130258, 0.27577711), np.float32)


class VideoError(Exception):
  """A video cannot be read. The message names the file and, where known, the frame."""


@dataclasses.dataclass(frozen=True)
class Orientation:
  """How a stored frame is turned to be shown: `turns` quarter turns counterclockwise (as
  `np.rot90`), then mirrored left to right if `mirrored`. These eight are every way a video's
  display matrix (at quarter turns) or an image's EXIF tag can ask for."""

  turns: int = 0
  mirrored: bool = False

  def apply(self, frame: np.ndarray) -> np.ndarray:
    """(H, W, …) stored → shown; the frame itself when nothing is to be done."""
    if not self.turns and not self.mirrored:
      return frame
    shown = np.rot90(frame, self.turns)
    return np.ascontiguousarray(shown[:, ::-1] if self.mirrored else shown)

  def after(self, first: Orientation) -> Orientation:
    """One orientation doing `first`, then this one."""
    probe = np.arange(6).reshape(2, 3)
    want = self.apply(first.apply(probe))
    for turns in range(4):
      for mirrored in (False, True):
        candidate = Orientation(turns, mirrored)
        got = candidate.apply(probe)
        if got.shape == want.shape and (got == want).all():
          return candidate
    raise AssertionError("the eight orientations are a group")


UPRIGHT = Orientation()
_VERTICAL_FLIP = Orientation(2, mirrored=True)


def display_orientation(matrix, path: str) -> Orientation:
  """The orientation a video's display matrix (9 int32 in FFmpeg's layout, or None) asks for,
  decided as FFmpeg's command line does it (its `autorotate`: the rotation in whole degrees,
  then the matrix's signs for the mirrors). A rotation off the quarter turns is a `VideoError`."""
  if matrix is None:
    return UPRIGHT
  m = [int(x) for x in matrix]
  scale = np.hypot(m[0], m[3]), np.hypot(m[1], m[4])
  if not all(scale):
    raise VideoError(f"{path}: its display matrix is degenerate ({m})")
  clockwise = round(np.degrees(np.arctan2(m[1] / scale[1], m[0] / scale[0]))) % 360
  if clockwise == 90:
    return _VERTICAL_FLIP.after(Orientation(1)) if m[3] > 0 else Orientation(3)
  if clockwise == 270:
    return _VERTICAL_FLIP.after(Orientation(3)) if m[3] < 0 else Orientation(1)
  if clockwise == 180:
    mirror = Orientation(0, mirrored=m[0] < 0)
    return _VERTICAL_FLIP.after(mirror) if m[4] < 0 else mirror
  if clockwise == 0:
    return _VERTICAL_FLIP if m[4] < 0 else UPRIGHT
  raise VideoError(
    f"{path}: rotated by {(360 - clockwise) % 360}° by its display matrix; only quarter turns "
    "are read (turn the video with ffmpeg first)"
  )


def _stream_orientation(container, path: str) -> tuple[Orientation, int]:
  """(the orientation players show the first video stream in, the quarter turns counterclockwise
  that decord applies itself: it follows the matrix's rotation but not its mirrors)."""
  frame = next(container.decode(container.streams.video[0]), None)
  if frame is None:
    raise VideoError(f"{path}: no frames")
  side = frame.side_data.get("DISPLAYMATRIX")
  matrix = None if side is None else np.frombuffer(bytes(side), np.int32)
  return display_orientation(matrix, path), round(frame.rotation / 90) % 4


class VideoReader(Protocol):
  path: str
  num_frames: int
  fps: float
  height: int  # as shown
  width: int
  orientation: Orientation  # how its stored frames are turned to be shown
  times: np.ndarray  # float64 (num_frames,): when each frame is shown, seconds from the first

  def frames(self, indices) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB frames, in the order asked."""
    ...


# decord can hang on some broken files; its calls run in this pool with a time limit. A call
# that times out leaves its thread behind (a C call cannot be interrupted); the error says so.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="decord")


def _guarded(fn, timeout_s: float, what: str):
  future = _POOL.submit(fn)
  try:
    return future.result(timeout=timeout_s)
  except concurrent.futures.TimeoutError:
    raise VideoError(f"{what}: decoder gave no answer within {timeout_s:.0f} s") from None


class DecordReader:
  """Frame-exact random access through decord (`VideoReader.get_batch`), frames as shown."""

  def __init__(self, path: str, *, timeout_s: float = 60.0):
    self.path = path
    self.timeout_s = timeout_s
    if not os.path.isfile(path):
      raise VideoError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
      raise VideoError(f"{path}: empty file")

    def open_():
      import av
      import decord

      # PyAV first: it refuses a file FFmpeg cannot read without a word on stderr, where decord
      # logs a line of its own before raising, and says more ("Invalid data found ...")
      with av.open(path) as container:
        if not container.streams.video:
          raise VideoError(f"{path}: no video stream")
        orientation, decord_turns = _stream_orientation(container, path)
      reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
      return reader, orientation, decord_turns

    try:
      self._vr, self.orientation, decord_turns = _guarded(open_, timeout_s, path)
      # decord's frames come turned by the matrix's rotation already: undo that, then show
      self._from_decord = self.orientation.after(Orientation((4 - decord_turns) % 4))
    except VideoError:
      raise
    except Exception as e:
      raise VideoError(f"{path}: cannot open video: {_first_line(e, path)}") from None
    self.num_frames = len(self._vr)
    if self.num_frames == 0:
      raise VideoError(f"{path}: no frames")
    self.fps = float(self._vr.get_avg_fps())
    starts = np.asarray(self._vr.get_frame_timestamp(range(self.num_frames)))[:, 0]
    self.times = starts.astype(np.float64) - float(starts[0])
    first = self.frames([0])
    self.height, self.width = int(first.shape[1]), int(first.shape[2])

  def frames(self, indices) -> np.ndarray:
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    bad = [i for i in idx if not 0 <= i < self.num_frames]
    if bad:
      raise VideoError(f"{self.path}: frame {bad[0]} out of range (video has {self.num_frames})")

    def read():
      frames = self._vr.get_batch(idx).asnumpy()
      # Back to the start: otherwise decord's decoder goes on decoding in the background, to the
      # end of the file, holding every frame (dmlc/decord#208's workaround).
      self._vr.seek(0)
      return frames

    try:
      out = _guarded(read, self.timeout_s, f"{self.path} frames {idx[0]}..{idx[-1]}")
    except VideoError:
      raise
    except Exception as e:
      where = f"frame {idx[0]}" if len(idx) == 1 else f"frames {idx[0]}..{idx[-1]}"
      raise VideoError(f"{self.path}: cannot decode {where}: {_first_line(e, self.path)}") from None
    if out.shape[0] != len(idx) or out.ndim != 4 or out.shape[-1] != 3:
      raise VideoError(f"{self.path}: decoder returned {out.shape} for {len(idx)} frames")
    if self._from_decord != UPRIGHT:
      out = np.stack([self._from_decord.apply(f) for f in out])
    return out


class SequentialReader:
  """A video's frames in order, each decoded once, with PyAV: `read(lo, hi)` gives frames
  lo … hi − 1 and must continue where the last call ended.

  For streaming whole videos. `DecordReader` must seek back after each read (its decoder would
  otherwise run on in the background, holding every frame to the end of the file:
  dmlc/decord#157, #208), so reading a video range by range through it re-decodes from a key
  frame each time; PyAV decodes each frame once, only when asked, 4× faster than decord on 720p
  here. Its rgb24 frames equal decord's (the same ffmpeg conversion; the tests compare both). The
  frame count stays decord's (`open_video`): a file that yields fewer frames is a `VideoError`.
  """

  def __init__(self, path: str, num_frames: int, orientation: Orientation = UPRIGHT):
    import av

    self.path, self.num_frames, self.position = path, num_frames, 0
    self.orientation = orientation
    try:
      self._container = av.open(path)
      stream = self._container.streams.video[0]
      stream.thread_type = "AUTO"
      self._decoded = self._container.decode(stream)
    except Exception as e:
      raise VideoError(f"{path}: cannot open video: {_first_line(e, path)}") from None

  def read(self, lo: int, hi: int) -> list[np.ndarray]:
    """hi − lo uint8 (H, W, 3) RGB frames, as a list: stacking them would copy each frame once
    more (6 MB at 1080p) on the thread that decodes."""
    if lo != self.position or not lo < hi <= self.num_frames:
      raise ValueError(f"{self.path}: read({lo}, {hi}) after frame {self.position}")
    out = []
    try:
      for _ in range(hi - lo):
        out.append(self.orientation.apply(next(self._decoded).to_ndarray(format="rgb24")))
    except StopIteration:
      raise VideoError(
        f"{self.path}: ends after {lo + len(out)} frames, the reader counted {self.num_frames}"
      ) from None
    except Exception as e:
      raise VideoError(
        f"{self.path}: cannot decode frame {lo + len(out)}: {_first_line(e, self.path)}"
      ) from None
    self.position = hi
    return out

  def close(self) -> None:
    self._container.close()


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def numbered_images(folder: str) -> list[str]:
  """The image files of a folder in frame order: by the last number in each name (so frame_2
  comes before frame_10), names without a number refused."""
  import re

  try:
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]
  except OSError as e:
    raise VideoError(f"{folder}: cannot list frames: {e.strerror}") from None
  keyed = []
  for n in names:
    digits = re.findall(r"\d+", os.path.splitext(n)[0])
    if not digits:
      raise VideoError(f"{os.path.join(folder, n)}: a frame file needs a number in its name")
    keyed.append((int(digits[-1]), n))
  keyed.sort()
  for (a, first), (b, second) in zip(keyed, keyed[1:]):
    if a == b:
      raise VideoError(f"{folder}: {first} and {second} both hold frame number {a}")
  return [os.path.join(folder, n) for _, n in keyed]


class FrameFolderReader:
  """A folder of numbered image files read as a video (frame k: the k-th by number), each turned
  as its EXIF orientation says (`orientation` stays upright: it may differ by frame). Such a
  folder carries no frame rate: `fps` says it."""

  orientation = UPRIGHT

  def __init__(self, path: str, fps: float | None):
    self.path = path
    if not fps or fps <= 0:
      raise VideoError(f"{path}: a folder of frames has no frame rate; give it (--source_fps)")
    self.files = numbered_images(path)
    if not self.files:
      raise VideoError(f"{path}: no frames ({'/'.join(IMAGE_EXTENSIONS)} files)")
    self.num_frames, self.fps = len(self.files), float(fps)
    self.times = np.arange(self.num_frames) / self.fps
    first = self.frames([0])
    self.height, self.width = int(first.shape[1]), int(first.shape[2])

  def _read(self, i: int) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
      with Image.open(self.files[i]) as img:
        mode = img.mode
        shown = ImageOps.exif_transpose(img)
        rgb = np.asarray(shown.convert("RGB")) if mode in EIGHT_BIT_MODES else None
    except Exception as e:
      raise VideoError(
        f"{self.files[i]}: cannot read frame {i}: {_first_line(e, self.files[i])}"
      ) from None
    if rgb is None:  # PIL would clip a 16-bit or float image to 255: a white frame
      raise VideoError(f"{self.files[i]}: a {mode} image; frames and maps are read as 8-bit")
    if i and rgb.shape[:2] != (self.height, self.width):
      raise VideoError(
        f"{self.files[i]}: {rgb.shape[1]}×{rgb.shape[0]} (width × height), the first frame is "
        f"{self.width}×{self.height}"
      )
    return rgb

  def frames(self, indices) -> np.ndarray:
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    bad = [i for i in idx if not 0 <= i < self.num_frames]
    if bad:
      raise VideoError(f"{self.path}: frame {bad[0]} out of range (it has {self.num_frames})")
    return np.stack([self._read(i) for i in idx])


class RangeReader:
  """`SequentialReader`'s interface over any `VideoReader` (random access, e.g. in tests)."""

  def __init__(self, reader: VideoReader):
    self.reader = reader  # its frames come turned as shown

  def read(self, lo: int, hi: int) -> list[np.ndarray]:
    return list(self.reader.frames(np.arange(lo, hi)))

  def close(self) -> None:
    pass


def sequential(reader: VideoReader):
  """The in-order reader for streaming `reader`'s frames: PyAV for a video file."""
  if isinstance(reader, DecordReader):
    return SequentialReader(reader.path, reader.num_frames, reader.orientation)
  return RangeReader(reader)


# FFmpeg's error codes that decord reports as bare numbers ("av_read_frame failed with N", N the
# negated AVERROR), in words.
_AVERRORS = {1094995529: "invalid data, a truncated or corrupt file", 541478725: "end of file"}


def _first_line(e: Exception, path: str) -> str:
  """A library's error, its first line, for a message that begins with `path`: where the
  library names the path again, it is "the file" there; decord's log prefix ("[12:51:54]
  /src/video/video_reader.cc:486: Error: ") is dropped and FFmpeg's error codes named."""
  if getattr(e, "strerror", None):  # FFmpeg's errors through PyAV, and the OS's: no errno, path
    return str(e.strerror)
  text = str(e).strip()
  if not text:
    return type(e).__name__
  line = text.splitlines()[0].replace(str(path), "the file")
  line = re.sub(r"^\[[\d:]+\] \S+:\d+: (Error: )?", "", line)
  code = re.search(r"failed with (-?\d+)$", line)
  if code and abs(int(code.group(1))) in _AVERRORS:
    line = f"{line[: code.start()]}failed: {_AVERRORS[abs(int(code.group(1)))]}"
  return line[:300]


def open_video(path: str, *, fps: float | None = None, timeout_s: float = 60.0) -> VideoReader:
  """A video file, or a folder of numbered frames (which needs `fps`; a file keeps its own)."""
  if os.path.isdir(path):
    return FrameFolderReader(path, fps)
  return DecordReader(path, timeout_s=timeout_s)


def variable_times(video: VideoReader) -> np.ndarray | None:
  """The frames' times of a variable-rate video (one whose frames stray more than half a frame
  from the even spacing of its average rate), for outputs that keep time with it; None for a
  constant-rate one, whose outputs are written at its `fps`."""
  even = np.arange(video.num_frames) / video.fps
  return video.times if np.max(np.abs(video.times - even)) > 0.5 / video.fps else None


def resize_frames(frames, size: int | tuple[int, int]) -> np.ndarray:
  """uint8 (N, H, W, C), or a sequence of N (H, W, C) frames → uint8 (N, h, w, C) with PIL's
  bilinear filter (antialiased when shrinking), as torchvision's Resize on a PIL image does in
  the original. C is 3 or 1."""
  from PIL import Image

  h, w = (size, size) if isinstance(size, int) else size
  if np.shape(frames[0])[:2] == (h, w):
    return np.array(frames)
  out = np.empty((len(frames), h, w, np.shape(frames[0])[-1]), np.uint8)
  for i, f in enumerate(frames):
    img = Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f)
    r = np.asarray(img.resize((w, h), Image.BILINEAR))
    out[i] = r[..., None] if f.shape[-1] == 1 else r
  return out


def to_gray(frames: np.ndarray) -> np.ndarray:
  """Saliency-map frames (N, H, W, 3) → (N, H, W) uint8, as PIL's convert('L') does."""
  f = np.asarray(frames).astype(np.uint32)
  # ITU-R 601-2 luma, PIL's integer formula: (R·299 + G·587 + B·114) / 1000 rounded.
  return ((f[..., 0] * 19595 + f[..., 1] * 38470 + f[..., 2] * 7471 + 0x8000) >> 16).astype(
    np.uint8
  )


def normalize(frames_u8, *, xp=np, dtype=np.float32):
  """uint8 (…, 3) → CLIP-normalised `dtype`, as ToTensor + Normalize: on the host (`xp` numpy)
  or, for uint8 frames sent as they are, on the device (`xp` jax.numpy)."""
  x = xp.asarray(frames_u8).astype(dtype) / 255.0
  return (x - xp.asarray(CLIP_MEAN)) / xp.asarray(CLIP_STD)
