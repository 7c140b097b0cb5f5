"""Prediction on whole videos: every frame exactly once (the original's windows), maps as arrays
or as files (challenge-format PNGs, a maps mp4, an overlay mp4), written so that an interrupted
run never leaves a half-written video behind.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from visage_jax.data.video import IMAGE_EXTENSIONS, open_video, variable_times
from visage_jax.inference import writers
from visage_jax.runtime import rerun
from visage_jax.runtime.files import into_place, staging

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
SETTINGS_DIR = ".visage-predict"  # one JSON record per finished video: what made it
OUTPUTS = ("pngs", "video", "overlay")  # what `--outputs` chooses among: all by default


def frame_stream(
  predictor, video, *, batch_size=1, stride=0, keep_frames=False, progress=None, levels=None
):
  """`stream.FrameMaps` for every frame of an open video, in order, as the model finishes them;
  with `levels` ({name: [(H, W), …]}) also those maps' 8-bit levels at those sizes, made on the
  device (`core.levels_program`)."""
  from visage_jax.inference import (  # JAX: this module's file handling is used before it is
    core,
    stream,
  )

  b = predictor.config.model.backbone
  source = stream.VideoSource(video, stride or stream.stride_for(video.fps))
  batches = stream.window_batches(
    source,
    window=b.num_frames,
    size=b.img_size,
    batch_size=batch_size * predictor.mesh.size,
    keep_frames=keep_frames,
  )
  step, levels_of = predictor.forward, None
  if levels:
    named = lambda state, clip: {"maps": predictor.forward(state, clip)}  # noqa: E731
    step = core.with_levels(named, levels, maps_of=lambda out: out["maps"], mesh=predictor.mesh)
    levels_of = lambda out: out["levels"]  # noqa: E731
  results = stream.run_batches(step, predictor.state, stream.prefetch(batches, 2), predictor.mesh)
  maps_of = (lambda out: out["maps"]) if levels else (lambda out: out)
  for frame in stream.frames_in_order(results, maps_of, levels_of):
    if progress:
      progress(1)
    yield frame


def video_maps(
  predictor, path: str, *, batch_size: int = 1, stride: int = 0, source_fps: float | None = None
) -> dict:
  """{name: float32 (N, S, S)} for every map the checkpoint gives ("expert1", "expert2",
  "fused"), one per source frame, plus "fps" and "source_size" (H, W). Holds the whole video's
  maps: for long videos iterate `frame_stream` instead. `path`: a video file, or a folder of
  numbered frames at `source_fps`."""
  video = open_video(path, fps=source_fps)
  out = {}
  for fm in frame_stream(predictor, video, batch_size=batch_size, stride=stride):
    for k, m in fm.maps.items():
      if k not in out:
        out[k] = np.zeros((video.num_frames, *m.shape), np.float32)
      out[k][fm.index] = m
  out["fps"] = video.fps
  out["source_size"] = (video.height, video.width)
  return out


def find_videos(inputs) -> list[str]:
  """Video files named directly, or found in named folders, sorted; a folder holding numbered
  images is itself one video (its frames), and so is, inside a named folder, a subfolder that
  holds them itself or in images/ or frames/ (a Hollywood-2 or UCF-Sports split's clips)."""
  out = []
  for item in inputs:
    if os.path.isdir(item) and is_frame_folder(item):
      out.append(item)
    elif os.path.isdir(item):
      out.extend(_scan(item)[0])
    else:
      out.append(item)
  return out


def folders_not_searched(inputs) -> list[str]:
  """The folders inside the named folders of videos that are not videos themselves:
  `find_videos` looks no deeper."""
  return sorted(
    folder
    for item in inputs
    if os.path.isdir(item) and not is_frame_folder(item)
    for folder in _scan(item)[1]
  )


def _scan(folder: str) -> tuple[list[str], list[str]]:
  """(the videos in a folder of videos, its other subfolders), each sorted by name."""
  videos, others = [], []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if os.path.isfile(path) and name.lower().endswith(VIDEO_EXTENSIONS):
      videos.append(path)
    elif os.path.isdir(path) and not name.startswith("."):
      frames = _frames_of(path)
      (videos if frames else others).append(frames or path)
  return videos, others


def _frames_of(folder: str) -> str | None:
  """`folder` if it holds numbered images, else its images/ or frames/ if that does."""
  for path in (folder, os.path.join(folder, "images"), os.path.join(folder, "frames")):
    if os.path.isdir(path) and is_frame_folder(path):
      return path
  return None


def is_frame_folder(path: str) -> bool:
  return any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path))


def video_name(path: str) -> str:
  """A file's name without extension; a frame folder's name, or its parent's when it is called
  images/ or frames/ (as in the Hollywood-2 and UCF-Sports layouts: <clip>/images)."""
  path = os.path.normpath(path)
  if os.path.isdir(path):
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base in ("images", "frames") else base
  return os.path.splitext(os.path.basename(path))[0]


def is_complete(output: str, name: str) -> bool:
  """A video's marker (`marker_path` of the outputs its record names; all of them for a folder of
  maps with no record, as visage-eval writes) appears (by rename) only after everything else of
  it is written."""
  recorded = recorded_settings(output, name) or {}
  return os.path.lexists(marker_path(output, name, recorded.get("outputs", OUTPUTS)))


def marker_path(output: str, name: str, outputs=OUTPUTS) -> str:
  """The output whose appearance marks a video complete: its PNG folder, else its maps mp4,
  else its overlay, whichever of them `outputs` writes first."""
  first = next(kind for kind in OUTPUTS if kind in outputs)
  return output_paths(output, name)[OUTPUTS.index(first)]


def settings_path(output: str, name: str) -> str:
  return os.path.join(output, SETTINGS_DIR, name + ".json")


def recorded_settings(output: str, name: str) -> dict | None:
  """The settings a finished video was made with; None if it has no (readable) record."""
  try:
    with open(settings_path(output, name)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def output_paths(output: str, name: str) -> list[str]:
  """Where a video's outputs go (`_move_into_place`), its record aside: the maps folder, the maps
  mp4, the overlay, and each expert's maps folder present in the output."""
  paths = [
    os.path.join(output, name),
    os.path.join(output, name + ".mp4"),
    os.path.join(output, "overlays", name + ".mp4"),
  ]
  experts = os.path.join(output, "experts")
  if os.path.isdir(experts):
    paths += [os.path.join(experts, e, name) for e in sorted(os.listdir(experts))]
  return paths


def foreign_output(output: str, name: str) -> str | None:
  """The first of a video's output paths that holds something this command did not write (no
  record of ours for that video: the record is moved into place before the outputs are), or
  None. Such a file or folder is never replaced."""
  if os.path.exists(settings_path(output, name)):
    return None
  return next((p for p in output_paths(output, name) if os.path.lexists(p)), None)


class ForeignOutput(FileExistsError):
  """One of a video's output names is taken by a file that visage-predict did not write."""


def write_video_outputs(
  predictor,
  path: str,
  output: str,
  *,
  settings: dict,
  batch_size: int = 1,
  progress=None,
) -> int:
  """Predict one video and write its files while the model runs; returns the number of frames.

  `settings` (made by `run_settings`) says what to write and is recorded beside the outputs.
  Everything is written into one staging folder, OUT/.visage-predict/<video>.partial, and moved
  into place when whole: a failure or a kill leaves nothing of the video among the outputs."""
  name = video_name(path)
  taken = foreign_output(output, name)
  if taken:
    raise ForeignOutput(f"{taken} exists and was not written by visage-predict: not replaced")
  video = open_video(path, fps=settings["source_fps"])
  outputs = settings["outputs"]
  experts = [k for k in predictor.expert_names if settings["save_experts"]]
  png_names = ["fused", *experts] if "pngs" in outputs else []
  with staging(os.path.join(output, SETTINGS_DIR, f"{name}.partial"), folder=True) as stage:
    for sub in png_names:
      os.makedirs(os.path.join(stage, sub))
    out = writers.VideoOutputs(
      {sub: os.path.join(stage, sub) for sub in png_names},
      source_hw=(video.height, video.width),
      fps=video.fps,
      map_size=settings["map_size"],
      maps_mp4=os.path.join(stage, "maps.mp4") if "video" in outputs else None,
      overlay_mp4=os.path.join(stage, "overlay.mp4") if "overlay" in outputs else None,
      times=variable_times(video),
    )
    try:
      frames = frame_stream(
        predictor,
        video,
        batch_size=batch_size,
        stride=settings["stride"],
        keep_frames="overlay" in outputs,
        progress=progress,
        levels=out.sizes((predictor.config.model.output_size,) * 2),
      )
      for fm in frames:
        out.add(fm.index, fm.maps, fm.frame, fm.levels)
      out.close()
    except BaseException:
      out.abort()
      raise
    if out.frames != video.num_frames:
      raise RuntimeError(f"{path}: internal: {out.frames} maps for {video.num_frames} frames")
    with open(os.path.join(stage, "settings.json"), "w") as f:
      json.dump(settings, f, indent=2)
    _move_into_place(stage, output, name, experts, outputs)
  return video.num_frames


def _move_into_place(stage: str, output: str, name: str, experts, outputs) -> None:
  """A finished video's files from its staging folder to their places. Its record goes first
  (what lies at its output names is ours from here on: `foreign_output`), then its marker goes
  (an overwritten video is incomplete from here on) with any output of an earlier run that this
  one does not write, and the marker comes back last: its appearance marks the video complete
  (`is_complete`)."""
  record = settings_path(output, name)
  os.makedirs(os.path.dirname(record), exist_ok=True)
  into_place(os.path.join(stage, "settings.json"), record)
  fused, maps_mp4, overlay_mp4 = output_paths(output, name)[:3]
  moves = [(os.path.join(stage, e), os.path.join(output, "experts", e, name)) for e in experts]
  moves += [
    (os.path.join(stage, "overlay.mp4"), overlay_mp4),
    (os.path.join(stage, "maps.mp4"), maps_mp4),
    (os.path.join(stage, "fused"), fused),
  ]
  moves = [(staged, final) for staged, final in moves if os.path.lexists(staged)]
  marker = marker_path(output, name, outputs)
  written = {final for _, final in moves}
  for path in [marker, *(p for p in output_paths(output, name) if p not in written)]:
    _remove(path)
  moves.sort(key=lambda move: move[1] == marker)  # the marker last
  for staged, final in moves:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    into_place(staged, final)


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def outputs_problem(outputs, save_experts: bool) -> str | None:
  """What is wrong with a choice of `outputs` (and `save_experts`), in the command's words; None
  if nothing. `visage-predict` checks it as it parses its flags, `run_settings` for callers."""
  if not outputs or not set(outputs) <= set(OUTPUTS):
    return f"--outputs must be one or more of {', '.join(OUTPUTS)}, comma-separated"
  if save_experts and "pngs" not in outputs:
    return "--save_experts writes each expert's PNGs: --outputs must include pngs"
  return None


def run_settings(
  checkpoint: str,
  *,
  map_size="source",
  save_experts=False,
  stride=0,
  source_fps=None,
  dtype=None,
  outputs=OUTPUTS,
) -> dict:
  """What decides a video's outputs, as recorded with each finished video. `outputs`: which of
  `OUTPUTS` to write."""
  problem = outputs_problem(outputs, save_experts)
  if problem:
    raise ValueError(problem)
  return {
    **rerun.model_settings(checkpoint, dtype=dtype, stride=stride, source_fps=source_fps),
    "map_size": map_size,
    "save_experts": bool(save_experts),
    "outputs": [kind for kind in OUTPUTS if kind in outputs],
  }
