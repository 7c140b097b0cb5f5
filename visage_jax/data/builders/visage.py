"""The TFDS builders: one example per video, ArrayRecord files, read back with no TensorFlow
through `tfds.builder_from_directory(...).as_data_source(split)`."""

from __future__ import annotations

import tensorflow_datasets as tfds

from visage_jax.data.builders import common

VERSION = tfds.core.Version("1.0.0")


def config_name(size: int, stride: int, offset: int) -> str:
  return f"s{size}_every{stride}_from{offset}"


class _Base(tfds.core.GeneratorBasedBuilder):
  VERSION = VERSION

  def __init__(self, *, sources: dict, size: int, stride: int, offset: int, **kwargs):
    """sources: {split: [callable() -> SourceVideo]}, opened one at a time while writing."""
    self._sources = sources
    self._size, self._stride, self._offset = size, stride, offset
    config = tfds.core.BuilderConfig(
      name=config_name(size, stride, offset),
      description=f"{size}×{size} frames, every {stride}th source frame from frame {offset}",
    )
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=common.features(self._size),
      metadata=tfds.core.MetadataDict(
        size=self._size, stride=self._stride, offset=self._offset, layout=self.LAYOUT
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      split: self._generate_examples(openers) for split, openers in self._sources.items() if openers
    }

  def _generate_examples(self, openers):
    for opener in openers:
      src = opener()
      yield src.name, common.example(src, size=self._size, stride=self._stride, offset=self._offset)


class VisageNtire2026(_Base):
  """The NTIRE 2026 video saliency challenge data, prepared for ViSAGE training."""

  LAYOUT = "ntire2026"


class VisageDhf1k(_Base):
  """DHF1K, prepared for ViSAGE training (videos 1–600 train, 601–700 validation)."""

  LAYOUT = "dhf1k"


class VisageHollywood2(_Base):
  """Hollywood-2 (as the field's loaders read it: training/ and testing/ clip folders)."""

  LAYOUT = "hollywood2"


class VisageUcfSports(_Base):
  """UCF-Sports (as the field's loaders read it: training/ and testing/ clip folders)."""

  LAYOUT = "ucf_sports"


BUILDERS = {
  "ntire2026": VisageNtire2026,
  "dhf1k": VisageDhf1k,
  "hollywood2": VisageHollywood2,
  "ucf_sports": VisageUcfSports,
}
