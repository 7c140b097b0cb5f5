"""The training input pipeline: Grain over the prepared ArrayRecord files.

Global batches are defined once for the whole job: epoch e visits the videos in a permutation
seeded by (seed, e), cut into global batches of `global_batch` videos (the remainder dropped).
Process p of n reads only its slice of each global batch, so the examples of a global batch are
the same for any number of processes. Each video gives one random `num_frames` window per visit,
drawn from a generator seeded by (seed, epoch, video): deterministic, and independent of the
process count too. The iterator's state (`get_state`/`set_state`) goes into checkpoints.
"""

from __future__ import annotations

import sys

import grain.python as grain
import numpy as np

from visage_jax.data.challenge import model_fixation_map
from visage_jax.data.windows import training_window


class GlobalBatchSampler:
  """Grain sampler: local index i of process p → the record of its slot in the global batch."""

  def __init__(
    self,
    num_records: int,
    global_batch: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
  ):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} does not split over {process_count} processes")
    if num_records < global_batch:
      raise ValueError(f"{num_records} videos cannot fill a global batch of {global_batch}")
    self.num_records, self.global_batch = num_records, global_batch
    self.local = global_batch // process_count
    self.process_index, self.process_count = process_index, process_count
    self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
    self.steps_per_epoch = num_records // global_batch

  def __repr__(self) -> str:  # part of the iterator state Grain saves: keep it deterministic
    return (
      f"GlobalBatchSampler(num_records={self.num_records}, global_batch={self.global_batch}, "
      f"process={self.process_index}/{self.process_count}, seed={self.seed}, "
      f"shuffle={self.shuffle}, num_epochs={self.num_epochs})"
    )

  def __len__(self) -> int:
    if self.num_epochs is None:
      return sys.maxsize
    return self.num_epochs * self.steps_per_epoch * self.local

  def position(self, index: int) -> tuple[int, int, int]:
    """(epoch, global step, record key) of local index `index`."""
    step, j = divmod(index, self.local)
    epoch, s = divmod(step, self.steps_per_epoch)
    q = s * self.global_batch + self.process_index * self.local + j
    if self.shuffle:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
      key = int(perm[q])
    else:
      key = q
    return epoch, step, key

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or index >= len(self):
      raise IndexError(index)
    epoch, _, key = self.position(index)
    rng = np.random.default_rng([self.seed, epoch, key])
    return grain.RecordMetadata(index=index, record_key=key, rng=rng)


class ToTrainingClip(grain.RandomMapTransform):
  """A prepared video → one training clip: a random window of `num_frames` frames (the original's
  rule: random start, or frames repeated cyclically for a short video), the saliency maps in
  [0, 1], the fixation map (counts, 3×3 max filter) and a mask of real frames."""

  def __init__(self, num_frames: int):
    self.num_frames = num_frames

  def random_map(self, element, rng: np.random.Generator):
    frames = element["frames"]
    n, size = frames.shape[0], frames.shape[1]
    idx = training_window(n, self.num_frames, rng)
    fix = element["fixations_model"]
    fmap = np.stack([model_fixation_map(fix[fix[:, 0] == t][:, 1:], size) for t in idx])
    return {
      "frames": frames[idx],
      "saliency": element["saliency"][idx].astype(np.float32) / np.float32(255),
      "fixations": fmap,
      "mask": np.ones((self.num_frames,), bool),
      "start": np.int32(idx[0]),
      "video": np.frombuffer(element["name"].ljust(32, b"\0")[:32], np.uint8).copy(),
    }


def make_loader(
  source,
  *,
  num_frames: int,
  global_batch: int,
  process_index: int = 0,
  process_count: int = 1,
  seed: int = 0,
  num_epochs: int | None = None,
  worker_count: int = 0,
):
  """A Grain DataLoader yielding this process's part of each global batch:
  frames uint8 (L, T, S, S, 3), saliency and fixations float32 (L, T, S, S), mask (L, T)."""
  if worker_count:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
      flags.FLAGS.mark_as_parsed()
  sampler = GlobalBatchSampler(
    len(source),
    global_batch,
    process_index=process_index,
    process_count=process_count,
    seed=seed,
    num_epochs=num_epochs,
  )
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[ToTrainingClip(num_frames), grain.Batch(sampler.local, drop_remainder=True)],
    worker_count=worker_count,
    shard_options=grain.NoSharding(),  # the sampler already gives this process its slice
  )


def video_names(batch) -> list[str]:
  return [bytes(v).rstrip(b"\0").decode() for v in np.asarray(batch["video"])]


def global_batch(mesh, local: dict) -> dict:
  """This process's part of a global batch → global jax.Arrays laid out over the mesh's batch
  axes (data, fsdp), each process contributing the rows it read."""
  import jax

  from visage_jax.runtime import parallel

  sharding = parallel.batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
  }
