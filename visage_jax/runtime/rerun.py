"""What a rerun may skip: each finished video records the settings that made it (`visage-predict`
beside its maps, `visage-eval` with its numbers), and a rerun compares them with its own.
"""

from __future__ import annotations

import os


def model_settings(checkpoint: str, *, dtype=None, stride=0, source_fps=None) -> dict:
  """What decides a video's maps, recorded with every finished video (by `visage-predict` and
  `visage-eval`): the checkpoint (its path and when it was written), the activation dtype, the
  stride, and the frame rate of videos given as folders of frames."""
  from visage_jax.runtime.config_file import written_at

  return {
    "checkpoint": os.path.abspath(checkpoint),
    "checkpoint_written": written_at(checkpoint),
    "dtype": dtype,
    "stride": int(stride),
    "source_fps": None if source_fps is None else float(source_fps),
  }


def settings_mismatch(recorded: dict | None, wanted: dict) -> str | None:
  """None if a finished video was made with `wanted`; else what differs, in a few words."""
  if recorded is None:
    return "no settings record"
  diffs = [
    f"{k} {recorded[k]!r} → {v!r}" if k in recorded else f"{k} not recorded (an older record)"
    for k, v in wanted.items()
    if recorded.get(k) != v
  ]
  return ", ".join(diffs) or None


class SettingsConflict(ValueError):
  """An output holds finished videos made with other settings, and recomputing was not asked."""


def rerun_plan(names, wanted: dict, *, finished, recorded, overwrite: bool, where: str):
  """(names to compute, how many are finished with `wanted`, "name (what differs)" of those to
  compute again). `finished(name)`: whether a video's outputs are complete; `recorded(name)`: the
  settings recorded with them (None: no readable record). Videos finished with other settings
  are computed again only with `overwrite`; else `SettingsConflict` names them (`where`: the
  output)."""
  todo, complete, differing = [], 0, []
  for name in names:
    if not finished(name):
      todo.append(name)
      continue
    why = settings_mismatch(recorded(name), wanted)
    if why is None:
      complete += 1
    else:
      todo.append(name)
      differing.append(f"{name} ({why})")
  if differing and not overwrite:
    more = f" and {len(differing) - 1} more" if len(differing) > 1 else ""
    raise SettingsConflict(
      f"{where} holds videos made with other settings: {differing[0]}{more}; "
      "pass --overwrite to recompute them"
    )
  return todo, complete, differing
