"""`visage-convert`: the original PyTorch weights → one Orbax checkpoint plus its resolved config.

    visage-convert --config=configs/visage.py:6b --backbone=FILE.pt
        [--expert1=expert1.pth] [--expert2=expert2.pth] --output=DIR [--merge_lora]

Needs the `[convert]` extra (PyTorch). Any config field can be set: --config.model.dtype=float32.
Exit codes: 0 done, 2 a mistake (one line on stderr, no output written), 130 interrupted.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from visage_jax.cli import (
  check_apart,
  check_new_output,
  fail,
  parse_config_flags,
  require_extra,
  run_app,
)

FLAGS = flags.FLAGS


def main(_):
  from absl import logging

  from conversion.convert import convert
  from conversion.torch_io import ConversionError

  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO
  _check_before_work()
  try:
    convert(
      FLAGS.config,
      backbone=FLAGS.backbone,
      expert1=FLAGS.expert1,
      expert2=FLAGS.expert2,
      output=FLAGS.output,
      merge_lora=FLAGS.merge_lora,
      unsafe_pickle=FLAGS.unsafe_pickle,
    )
  except ConversionError as e:
    fail("visage-convert", str(e))


def _check_before_work() -> None:
  """The extra, the config's model and the output, before a tensor is read (minutes at 6B)."""
  from configs.visage import model_mistake

  require_extra("visage-convert", "torch", "reading the original's checkpoints")
  mistake = model_mistake(FLAGS.config.model)
  if mistake:
    fail("visage-convert", f"--config.{mistake}")
  inputs = [(f"--{k}", FLAGS[k].value) for k in ("backbone", "expert1", "expert2")]
  check_apart("visage-convert", FLAGS.output, inputs)
  check_new_output("visage-convert", FLAGS.output)


def run(argv=None) -> None:
  config_flags.DEFINE_config_file("config", None, "configs/visage.py:PRESET", lock_config=True)
  flags.DEFINE_string("backbone", None, "InternVideo2 checkpoint (.pt/.pth/.bin/.safetensors)")
  flags.DEFINE_string("expert1", None, "Expert 1 checkpoint (stage 1 or 2)")
  flags.DEFINE_string("expert2", None, "Expert 2 checkpoint (stage 1 or 2)")
  flags.DEFINE_string("output", None, "Output directory (must not exist)")
  flags.DEFINE_bool("merge_lora", False, "Fold each expert's LoRA into its own backbone copy")
  flags.DEFINE_bool("unsafe_pickle", False, "Allow pickles with non-tensor objects (runs code)")
  flags.mark_flags_as_required(["config", "backbone", "output"])
  parser = lambda a: parse_config_flags(a, "visage-convert")
  run_app(main, "visage-convert", argv=argv, flags_parser=parser)


if __name__ == "__main__":
  run()
