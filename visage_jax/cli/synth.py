"""`visage-synth`: a synthetic dataset in exactly one of the layouts `visage-eval` reads.

visage-synth --output=DIR [--layout=ntire2026|dhf1k|hollywood2|ucf_sports] [--videos=8]
    [--frames=90] [--size=144x256] [--fps=30] [--seed=0]
"""

from __future__ import annotations

from absl import flags

from visage_jax.cli import check_new_output, fail, run_app

flags.DEFINE_string("output", None, "Output directory (must not exist)")
flags.DEFINE_enum(
  "layout", "ntire2026", ["ntire2026", "dhf1k", "hollywood2", "ucf_sports"], "Dataset layout"
)
flags.DEFINE_integer("videos", 8, "Number of videos")
flags.DEFINE_integer("frames", 90, "Frames per video")
flags.DEFINE_string("size", "144x256", "Frame size HxW")
flags.DEFINE_float("fps", 30.0, "Frame rate (frame folders record none: pass it as --source_fps)")
flags.DEFINE_integer("seed", 0, "Seed: the same seed gives the same dataset")
FLAGS = flags.FLAGS


def main(_):
  from tqdm import tqdm

  from visage_jax.data.synth import write_dataset

  try:
    h, w = (int(v) for v in FLAGS.size.lower().split("x"))
  except ValueError:
    fail("visage-synth", f"--size must look like 144x256, got {FLAGS.size!r}")
  check_new_output("visage-synth", FLAGS.output)
  bars = []  # made at the first call: after write_dataset has checked the flags

  def progress(done, total):
    if not bars:
      bars.append(tqdm(total=total, desc="videos", unit="video"))
    bars[0].update(done - bars[0].n)

  try:
    split = write_dataset(
      FLAGS.output,
      layout=FLAGS.layout,
      videos=FLAGS.videos,
      frames=FLAGS.frames,
      size=(h, w),
      fps=FLAGS.fps,
      seed=FLAGS.seed,
      progress=progress,
    )
  except (FileExistsError, ValueError) as e:
    fail("visage-synth", str(e))
  bars[0].close()
  counts = ", ".join(f"{len(names)} {name}" for name, names in split.items())
  print(f"wrote {FLAGS.output} ({FLAGS.layout} layout): {counts} videos")


def run():
  flags.mark_flag_as_required("output")
  run_app(main, "visage-synth")


if __name__ == "__main__":
  run()
