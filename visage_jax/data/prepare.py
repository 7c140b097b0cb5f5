"""`visage-prepare`: a dataset as distributed → TFDS ArrayRecord files for training.

Every video is checked before anything is written (its frames decode, its saliency video has as
many frames, its fixations lie inside the frame and cover every frame). A bad video stops the run
with an error naming the file, or with `skip_bad` is left out and listed in `skipped.json` beside
the output. The dataset is built in a temporary directory and moved into place only when whole.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import shutil

from visage_jax.data import challenge, layouts
from visage_jax.data.builders.common import SourceVideo
from visage_jax.data.video import VideoError, to_gray
from visage_jax.runtime.files import staged


def _openers(layout, splits, check, source_fps):
  """{split: the checked [(opener, frame rate)]}: each opener reads one video of the layout."""
  out = {}
  for split in splits:
    openers = []
    for name in layout.names(split):

      def opener(name=name, split=split):
        entry = layout.entry(name, split)
        video, sal, points = layouts.open_entry(entry, source_fps=source_fps)
        return SourceVideo(name, video, lambda idx, sal=sal: to_gray(sal.frames(idx)), points)

      openers.append((name, opener))
    out[split] = check(openers)
  return out


def prepare(
  layout: str,
  root: str,
  output: str,
  *,
  splits=None,
  size: int = 224,
  fps: float = 5.0,
  source_fps: float | None = None,
  offset: int = 0,
  skip_bad: bool = False,
  progress=None,
) -> dict:
  """Build the dataset into `output`. Returns {"path", "splits", "skipped"}."""
  from visage_jax.data.builders.visage import BUILDERS

  if layout not in BUILDERS:
    raise challenge.DataError(f"unknown layout {layout!r}; choose one of {sorted(BUILDERS)}")
  output = os.path.abspath(output)
  if os.path.exists(output) and os.listdir(output):
    raise challenge.DataError(f"{output}: already exists and is not empty")
  layouts.check_frame_rate(layout, source_fps)
  splits = splits or ["train", layouts.EVAL_SPLIT[layout]]
  skipped: list[dict] = []
  check = _checker(
    skipped, skip_bad=skip_bad, source_fps=source_fps, progress=progress, offset=offset
  )
  sources = _openers(layouts.open_layout(layout, root), splits, check, source_fps)
  stride = _stride(sources, root, fps=fps, source_fps=source_fps)
  builder = BUILDERS[layout]
  _build(builder, sources, output, skipped, size=size, stride=stride, offset=offset)
  return {
    "layout": layout,
    "path": dataset_dir(output),
    "splits": {s: len(o) for s, o in sources.items()},
    "stride": stride,
    "offset": offset,
    "size": size,
    "skipped": skipped,
  }


def _checker(skipped: list, *, skip_bad: bool, source_fps, progress, offset: int = 0):
  """What `_openers` applies to a split's openers: each video opened once (the checks live in the
  openers), the good ones kept with their frame rates; a bad one raises its error, or with
  `skip_bad` is left out and appended to `skipped`. `progress` hears "checked NAME (i of n)" for
  each video of a split, then "writing NAME (i of n)" over all splits as the builder opens each."""
  tally = {"kept": 0, "written": 0}

  def check(openers):
    good = []
    for i, (name, opener) in enumerate(openers, 1):
      try:
        src = opener()
        rate = source_fps or src.video.fps
        if offset >= src.video.num_frames:
          raise challenge.DataError(
            f"{src.video.path}: --offset={offset} lies past its {src.video.num_frames} frames"
          )
        del src
      except (challenge.DataError, VideoError) as e:
        if not skip_bad:
          raise
        skipped.append({"video": name, "error": str(e)})
        continue
      good.append((_announced(opener, name, tally, progress), rate))
      tally["kept"] += 1
      if progress:
        progress(f"checked {name} ({i} of {len(openers)})")
    return good

  return check


def _announced(opener, name: str, tally: dict, progress):
  """`opener` that first says "writing `name` (i of n)" through `progress` (when the builder
  reaches it): the i-th opened of the n that `tally` kept."""
  if not progress:
    return opener

  def announce_then_open():
    tally["written"] += 1
    progress(f"writing {name} ({tally['written']} of {tally['kept']})")
    return opener()

  return announce_then_open


def _stride(sources, root: str, *, fps: float, source_fps) -> int:
  """Source frames per training frame at `fps`: the videos share one frame rate (or
  `source_fps` is given)."""
  rates = {round(r, 3) for openers in sources.values() for _, r in openers}
  if len(rates) > 1 and not source_fps:
    raise challenge.DataError(
      f"{root}: videos have different frame rates {sorted(rates)}; pass --source_fps to force one"
    )
  rate = rates.pop() if rates else 30.0
  return max(1, int(round(rate / fps)))


def _build(builder, sources, output: str, skipped, *, size: int, stride: int, offset: int):
  """The TFDS dataset and skipped.json, built in a temporary folder beside `output` (which may be
  an empty folder) and moved into it when whole."""
  with staged(output, folder=True) as tmp:
    with _tfds_notes_dropped():
      builder(
        sources={s: [o for o, _ in openers] for s, openers in sources.items()},
        size=size,
        stride=stride,
        offset=offset,
        data_dir=tmp,
      ).download_and_prepare()
    with open(os.path.join(tmp, "skipped.json"), "w") as f:
      json.dump({"skipped": skipped}, f, indent=2)
    shutil.rmtree(os.path.join(tmp, "downloads"), ignore_errors=True)  # TFDS's empty cache


@contextlib.contextmanager
def _tfds_notes_dropped():
  """Without what TFDS says while it builds: on stdout, the temporary folder it writes to (gone
  once the dataset is moved into place), and a warning that the builder's config is not one of
  its presets (ours never are: they are made from size, stride and offset)."""
  custom_config = _Dropping("Using custom data configuration")
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(custom_config)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.removeFilter(custom_config)


class _Dropping(logging.Filter):
  """Drops the log records whose message starts with `prefix`."""

  def __init__(self, prefix: str):
    super().__init__()
    self.prefix = prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(self.prefix)


def dataset_dir(prepared: str) -> str:
  """The one `<name>/<config>/<version>` directory under a `visage-prepare` output (or that
  directory itself, the path `visage-prepare` reports)."""
  if os.path.isfile(os.path.join(prepared, "dataset_info.json")):
    return prepared
  infos = glob.glob(os.path.join(prepared, "*", "*", "*", "dataset_info.json"))
  if not infos:
    raise challenge.DataError(f"{prepared}: no prepared dataset (run visage-prepare)")
  if len(infos) > 1:
    raise challenge.DataError(f"{prepared}: several prepared datasets: {sorted(infos)}")
  return os.path.dirname(infos[0])


def prepared_splits(prepared: str) -> dict[str, int]:
  """The splits of a `visage-prepare` output and their videos, from its dataset_info.json (no
  TFDS import)."""
  return _read_json(
    prepared,
    "dataset_info.json",
    lambda info: {s["name"]: sum(map(int, s["shardLengths"])) for s in info["splits"]},
  )


def prepared_size(prepared: str) -> int:
  """The frame size (pixels a side) a `visage-prepare` output was made at (its --size)."""
  return _read_json(prepared, "metadata.json", lambda meta: int(meta["size"]))


def _read_json(prepared: str, name: str, take):
  path = os.path.join(dataset_dir(prepared), name)
  try:
    with open(path) as f:
      return take(json.load(f))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise challenge.DataError(f"{path}: unreadable ({e})") from None


def data_source(prepared: str, split: str):
  """Random-access reader of one split (no TensorFlow needed)."""
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(dataset_dir(prepared))
  if split not in builder.info.splits:
    raise challenge.DataError(f"{prepared}: no split {split!r}; it has {list(builder.info.splits)}")
  return builder.as_data_source(split=split), builder.info
