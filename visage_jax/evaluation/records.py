"""What `visage-eval` keeps of each scored video, so that a rerun scores only what is missing:
the settings that decide a video's numbers, its record (OUTPUT/.visage-eval/<video>.npz: the
per-frame numbers with those settings) or a note of why it failed, the plan of a rerun, and the
one output folder that several processes share.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile

import jax
import numpy as np

from visage_jax.runtime.files import written_whole

RECORDS_DIR = ".visage-eval"  # a file a scored video: its per-frame numbers and their settings


def eval_settings(
  checkpoint, data, layout, entries, protocol, *, stride, dtype, quantize_uint8, source_fps
) -> dict:
  """What decides a video's numbers, recorded with them: `resume.model_settings` (checkpoint,
  dtype, stride, source_fps), the dataset, whether maps are scored as 8-bit, and for the DHF1K
  protocol its s-AUC settings and the videos its negatives come from."""
  from visage_jax.runtime.rerun import model_settings

  settings = {
    **model_settings(checkpoint, dtype=dtype, stride=stride, source_fps=source_fps),
    "data": os.path.abspath(data),
    "layout": layout,
    "quantize_uint8": bool(quantize_uint8),
  }
  if protocol:
    names = "\n".join(sorted(e.name for e in entries)).encode()
    pool = f"{len(entries)} videos, sha1 {hashlib.sha1(names).hexdigest()[:12]}"
    settings.update(sauc_frames=protocol["M"], sauc_seed=protocol["seed"], sauc_pool=pool)
  return settings


def record_path(output: str, name: str) -> str:
  return os.path.join(output, RECORDS_DIR, name + ".npz")


def write_record(path: str, settings: dict, frames: dict) -> None:
  """A scored video's numbers (`Aggregator.frames_of`) with the settings that made them, written
  whole or not at all."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arrays = {"/".join(key): values for key, values in frames.items()}
  with written_whole(path, "wb") as f:
    np.savez(f, settings=np.asarray(json.dumps(settings)), **arrays)


def read_record(path: str, *, numbers: bool = True) -> tuple[dict, dict | None] | None:
  """(settings, numbers) of a scored video, as `write_record` wrote them; None if unreadable.
  Without `numbers` only the settings are read (numbers None): the arrays stay on disk."""
  try:
    with np.load(path, allow_pickle=False) as record:  # members are read when indexed
      settings = json.loads(str(record["settings"]))
      frames = None
      if numbers:
        frames = {tuple(k.split("/")): record[k] for k in record.files if k != "settings"}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None
  return settings, frames


def videos_to_score(entries, output: str, settings: dict, *, save_maps: bool, overwrite: bool):
  """The entries not yet scored with `settings` (with `save_maps`: or whose maps are missing);
  says on stderr how many were, and which are scored again (`resume.rerun_plan`)."""
  from visage_jax.inference.predict import is_complete
  from visage_jax.runtime.rerun import rerun_plan

  def finished(name):
    maps = not save_maps or is_complete(os.path.join(output, "predictions"), name)
    return maps and os.path.isfile(record_path(output, name))

  def recorded(name):
    record = read_record(record_path(output, name), numbers=False)  # the plan needs no numbers
    return None if record is None else record[0]

  names = [e.name for e in entries]
  todo, complete, differing = rerun_plan(
    names, settings, finished=finished, recorded=recorded, overwrite=overwrite, where=output
  )
  if jax.process_index() == 0:
    if complete:
      where = os.path.join(output, RECORDS_DIR)
      print(
        f"visage-eval: {complete} of {len(names)} videos already scored ({where})", file=sys.stderr
      )
    for d in differing:
      print(f"visage-eval: scoring again {d}", file=sys.stderr)
    if todo and os.path.exists(os.path.join(output, "metrics.json")):
      os.remove(os.path.join(output, "metrics.json"))  # it would no longer say what is recorded
  todo = set(todo)
  return [e for e in entries if e.name in todo]


def failure_note(output: str, name: str) -> str:
  """Where a video that could not be scored says why."""
  return os.path.join(output, RECORDS_DIR, name + ".failed")


def check_shared_output(output: str) -> None:
  """With several processes, that all see one OUTPUT folder (process 0 reads every process's
  records there); else the same one-line `DataError` on every process."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  from visage_jax.data.challenge import DataError

  records = os.path.join(output, RECORDS_DIR)
  os.makedirs(records, exist_ok=True)
  run = int(multihost_utils.broadcast_one_to_all(np.random.randint(2**31)))  # not a stale probe
  probe = lambda p: os.path.join(records, f".process{p}-{run}")  # noqa: E731
  open(probe(jax.process_index()), "w").close()
  sync("visage-eval: probes written")
  sees = np.asarray([os.path.exists(probe(p)) for p in range(jax.process_count())])
  everyone = np.asarray(multihost_utils.process_allgather(sees))  # [p, q]: p sees q's probe
  os.remove(probe(jax.process_index()))
  if not everyone.all():
    p, q = (int(i) for i in np.argwhere(~everyone)[0])
    raise DataError(
      f"--output={output}: process {p} does not see what process {q} writes there; every "
      "process needs the same folder (on a filesystem they share)"
    )


def sync(name: str) -> None:
  """Wait for every process (nothing to wait for with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
