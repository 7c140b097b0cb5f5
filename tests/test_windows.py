"""Windows cover every frame exactly once and mask the padding."""

import numpy as np
import pytest
from reference import inference_windows

from visage_jax.data.windows import training_window, validation_windows


@pytest.mark.parametrize("n", [1, 19, 20, 21, 119, 120, 121])
@pytest.mark.parametrize("stride", [1, 6])
def test_inference_windows_cover_every_frame_once(n, stride):
  wins = inference_windows(n, 20, stride)
  seen = np.concatenate([idx[mask] for idx, mask in wins])
  assert sorted(seen.tolist()) == list(range(n))
  for idx, mask in wins:
    assert idx.shape == mask.shape == (20,)
    assert mask[0] and (np.diff(mask.astype(int)) <= 0).all()  # real frames first, then padding
    real = idx[mask]
    assert (idx[~mask] == real[-1]).all()  # padded with the last real frame
    if stride > 1:
      assert (np.diff(real) == stride).all()


def test_validation_windows_match_the_original():
  wins = validation_windows(50, 20, 4)
  assert [int(w[0][0]) for w in wins] == [0, 10, 20, 30]
  assert all(m.all() for _, m in wins)
  ((idx, mask),) = validation_windows(7, 20, 4)
  assert mask.sum() == 7 and (idx[7:] == 6).all()


def test_training_window():
  rng = np.random.default_rng(0)
  w = training_window(50, 20, rng)
  assert len(w) == 20 and (np.diff(w) == 1).all() and 0 <= w[0] <= 30
  assert training_window(7, 20, rng).tolist() == [i % 7 for i in range(20)]
