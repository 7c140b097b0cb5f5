"""The `config.json` of a checkpoint or a training workdir: the resolved config it was made with,
written whole and read back as that model. No JAX here: the commands read it in their checks,
before they pay for importing JAX."""

from __future__ import annotations

import datetime
import json
import os

import ml_collections

from visage_jax.runtime.files import written_whole

CONFIG_FILE = "config.json"


class CheckpointError(Exception):
  """A checkpoint directory is missing, incomplete or does not fit its config."""


def write_config(directory: str, config: ml_collections.ConfigDict) -> None:
  """Written whole or not at all (another process may be reading it)."""
  with written_whole(os.path.join(directory, CONFIG_FILE)) as f:
    f.write(config.to_json(indent=2, sort_keys=True))
    f.write("\n")


def written_at(directory: str) -> str | None:
  """When the checkpoint at `directory` was written: its config.json's modification time (UTC, to
  the microsecond), None without one. A checkpoint written again in place (retrained, converted
  anew) is another checkpoint, though its path is the same."""
  try:
    stamp_ns = os.stat(os.path.join(directory, CONFIG_FILE)).st_mtime_ns
  except OSError:
    return None
  stamp = datetime.datetime.fromtimestamp(stamp_ns // 1000 / 1e6, datetime.UTC)
  return stamp.isoformat(timespec="microseconds")


# Model fields added after checkpoints were first written, each with the value that means what
# the code did before it: a config.json written without one reads as the model it was made with.
ADDED_FIELDS = {"model.backbone.drop_path_rate": 0.0}


def read_config(directory: str) -> ml_collections.ConfigDict:
  path = os.path.join(directory, CONFIG_FILE)
  if os.path.isfile(directory):
    raise CheckpointError(f"{directory}: a file, not a checkpoint folder")
  if not os.path.isdir(directory):
    raise CheckpointError(f"{directory}: no such checkpoint folder")
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory}: not a visage-jax checkpoint (no {CONFIG_FILE})")
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
  cfg = ml_collections.ConfigDict(data)
  for dotted, value in ADDED_FIELDS.items():
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    if leaf not in node:
      node[leaf] = value
  # JSON has no tuples; the model treats these as sequences either way, but keep them immutable.
  cfg.model.experts = tuple(cfg.model.experts)
  cfg.model.backbone.taps = tuple(cfg.model.backbone.taps)
  cfg.model.lora.targets = tuple(cfg.model.lora.targets)
  return cfg
