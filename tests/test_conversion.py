"""visage-convert: bad inputs fail with one line naming the file and key, and write nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import CONFIG, convert_golden, golden, run_convert

from visage_jax.inference import Predictor

pytestmark = pytest.mark.slow  # whole commands and programs, end to end


def _assert_clean_failure(res, out_dir, *must_name):
  assert res.returncode != 0
  lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("visage-convert: error:")]
  assert len(lines) == 1, res.stderr[-2000:]
  for word in must_name:
    assert word in lines[0], lines[0]
  parent = os.path.dirname(out_dir)
  assert not os.path.exists(out_dir)
  assert not [p for p in os.listdir(parent) if ".partial-" in p]


def _convert(tmp_path, backbone, expert1=None, extra=()):
  out = str(tmp_path / "out")
  args = [f"--config={CONFIG}:tiny", f"--backbone={backbone}", f"--output={out}"]
  if expert1:
    args.append(f"--expert1={expert1}")
  return run_convert(*args, *extra), out


def _load(name):
  return torch.load(golden(name), map_location="cpu", weights_only=True)


def test_truncated_file(tmp_path):
  data = open(golden("backbone_t4.pt"), "rb").read()
  bad = tmp_path / "truncated.pt"
  bad.write_bytes(data[: len(data) // 2])
  res, out = _convert(tmp_path, str(bad))
  _assert_clean_failure(res, out, str(bad), "cannot read")


def test_missing_block(tmp_path):
  sd = _load("backbone_t4.pt")
  sd["module"] = {k: v for k, v in sd["module"].items() if ".blocks.3." not in k}
  bad = tmp_path / "no_block3.pt"
  torch.save(sd, bad)
  res, out = _convert(tmp_path, str(bad))
  _assert_clean_failure(res, out, str(bad), "missing tensor vision_encoder.blocks.3.")


def test_wrong_shape(tmp_path):
  sd = _load("backbone_t4.pt")
  key = "vision_encoder.blocks.2.attn.qkv.weight"
  sd["module"][key] = torch.zeros(96, 64)
  bad = tmp_path / "wrong_shape.pt"
  torch.save(sd, bad)
  res, out = _convert(tmp_path, str(bad))
  _assert_clean_failure(res, out, str(bad), key, "(96, 64)", "(64, 192)")


def test_wrong_lora_rank(tmp_path):
  sd = _load("expert1.pth")
  for k in list(sd):
    if "lora_A" in k:
      sd[k] = torch.zeros(8, *sd[k].shape[1:])
    elif "lora_B" in k:
      sd[k] = torch.zeros(sd[k].shape[0], 8, *sd[k].shape[2:])
  bad = tmp_path / "rank8.pth"
  torch.save(sd, bad)
  res, out = _convert(tmp_path, golden("backbone_t4.pt"), str(bad))
  _assert_clean_failure(res, out, str(bad), "lora_A", "rank 8", "model.lora.rank=4")


def test_missing_expert_tensor(tmp_path):
  sd = _load("expert2.pth")
  del sd["decoder.fuse11.norm1.weight"]
  bad = tmp_path / "e2.pth"
  torch.save(sd, bad)
  out = str(tmp_path / "out")
  res = run_convert(
    f"--config={CONFIG}:tiny",
    f"--backbone={golden('backbone_t4.pt')}",
    f"--expert2={bad}",
    f"--output={out}",
  )
  _assert_clean_failure(res, out, str(bad), "decoder.fuse11.norm1.weight")


@pytest.mark.parametrize(
  "flag, name, holds, belongs",
  [
    ("--expert1", "expert2.pth", "Expert 2's decoder", "--expert2"),
    ("--expert2", "full_expert1.pth", "Expert 1's decoder", "--expert1"),
    ("--expert1", "backbone_t4.pt", "an InternVideo2 backbone", "--backbone"),
  ],
)
def test_a_file_given_in_another_files_place_is_named(tmp_path, flag, name, holds, belongs):
  """Swapped --expert1/--expert2 (or the backbone given as an expert): named before any work,
  where the conversion used to stop at the first tensor the file lacked."""
  res, out = _convert(tmp_path, golden("backbone_t4.pt"), extra=[f"{flag}={golden(name)}"])
  want = f"{golden(name)}: given as {flag}, but it holds {holds}; pass it as {belongs}"
  _assert_clean_failure(res, out, want)
  assert "converting" not in res.stderr


def test_existing_output_is_not_overwritten(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep").write_text("x")
  res = run_convert(
    f"--config={CONFIG}:tiny", f"--backbone={golden('backbone_t4.pt')}", f"--output={out}"
  )
  assert res.returncode != 0 and "already exists" in res.stderr
  assert (out / "keep").read_text() == "x"


def test_nested_state_dict_and_safetensors(tmp_path, ckpt_plain, clip):
  """A backbone nested under 'state_dict' and experts as .safetensors convert to the same model."""
  from safetensors.torch import save_file

  sd = _load("backbone_t4.pt")["module"]
  backbone = tmp_path / "b.bin"
  torch.save({"state_dict": sd}, backbone)
  experts = {}
  for name in ("expert1", "expert2"):
    e = {k: v.contiguous() for k, v in _load(name + ".pth").items()}
    experts[name] = str(tmp_path / f"{name}.safetensors")
    save_file(e, experts[name])
  out = str(tmp_path / "out")
  res = run_convert(
    f"--config={CONFIG}:tiny",
    f"--backbone={backbone}",
    f"--expert1={experts['expert1']}",
    f"--expert2={experts['expert2']}",
    f"--output={out}",
  )
  assert res.returncode == 0, res.stderr[-2000:]
  a = Predictor.load(out).predict_clip(clip[:1])
  b = Predictor.load(ckpt_plain).predict_clip(clip[:1])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_merged_lora_matches_unmerged(tmp_path, ckpt_plain, clip):
  merged = convert_golden(
    str(tmp_path / "merged"),
    "--merge_lora",
    "--config.model.backbone.mlp_impl=plain",
  )
  pm = Predictor.load(merged)
  assert pm.config.model.lora_merged
  kernel = pm.model.backbone.blocks.attn.qkv.kernel[...]
  assert kernel.shape == (8, 2, 64, 192)  # (depth, expert, in, out)
  assert pm.model.backbone.blocks.attn.qkv.lora_a is None
  a = pm.predict_clip(clip)
  b = Predictor.load(ckpt_plain).predict_clip(clip)
  for k in ("expert1", "expert2", "fused"):
    err = float(np.max(np.abs(a[k] - b[k])))
    assert err <= 1e-5, f"{k}: {err}"


def test_one_expert_and_backbone_only(tmp_path, ckpt_plain, clip):
  one = convert_golden(str(tmp_path / "one"), experts=("expert2",))
  out = Predictor.load(one).predict_clip(clip[:1])
  assert set(out) == {"expert2", "fused"}
  np.testing.assert_array_equal(out["fused"], out["expert2"])
  both = Predictor.load(ckpt_plain).predict_clip(clip[:1])
  # Another program (one expert instead of two): float32 noise only.
  assert float(np.max(np.abs(out["expert2"] - both["expert2"]))) <= 1e-5

  bare = convert_golden(str(tmp_path / "bare"), experts=())
  with pytest.raises(Exception, match="only a backbone"):
    Predictor.load(bare)


def test_stage1_expert_file_converts_without_lora(stage1_expert1, clip):
  p = Predictor.load(stage1_expert1[2])
  assert not p.config.model.lora.enabled
  assert p.model.backbone.blocks.attn.qkv.lora_a is None
  assert np.isfinite(p.predict_clip(clip[:1])["fused"]).all()


def test_grid_change_resizes_position_embedding_bicubically(tmp_path):
  """A model at 112×112 (8×8 patches) takes the 16×16-grid checkpoint, as the original would."""
  import torch.nn.functional as F

  from visage_jax import checkpoint as ckpt

  out = str(tmp_path / "small")
  res = run_convert(
    f"--config={CONFIG}:tiny",
    f"--backbone={golden('backbone_t4.pt')}",
    f"--output={out}",
    "--config.model.backbone.img_size=112",
    "--config.model.backbone.num_frames=4",
  )
  assert res.returncode == 0, res.stderr[-2000:]
  _, model = ckpt.load_model(out)
  pe = np.asarray(model.backbone.pos_embed[...])
  src = _load("backbone_t4.pt")["module"]["vision_encoder.pos_embed"]
  assert pe.shape == (1, 1 + 4 * 64, 64)
  np.testing.assert_array_equal(pe[0, 0], src[0, 0].numpy())
  # frame 2 of the 4-frame grid, resized 16×16 → 8×8 on its own
  frame = src[0, 1:].reshape(4, 16, 16, 64)[2].permute(2, 0, 1)[None]
  ref = F.interpolate(frame, size=(8, 8), mode="bicubic", align_corners=False)[0]
  np.testing.assert_allclose(
    pe[0, 1:].reshape(4, 8, 8, 64)[2], ref.permute(1, 2, 0).numpy(), atol=1e-6
  )


def test_merge_lora_in_memory(ckpt_plain, clip):
  from flax import nnx

  from visage_jax import checkpoint as ckpt
  from visage_jax.models.visage import merge_lora

  cfg, model = ckpt.load_model(ckpt_plain)
  mcfg, merged = merge_lora(cfg.model, model)
  assert mcfg.lora_merged and not cfg.model.lora_merged
  f = nnx.jit(lambda m, x: m(x)["fused"])
  err = float(np.max(np.abs(np.asarray(f(merged, clip[:1])) - np.asarray(f(model, clip[:1])))))
  assert err <= 1e-5


def test_restore_budget_covers_the_largest_array():
  """Orbax refuses to restore an array larger than its in-flight budget: the 6B stacked qkv
  kernels (48 × 3200 × 9600 bfloat16, 2.95 GB) did not load with a fixed 2 GB."""
  import jax

  from visage_jax import checkpoint as ckpt

  qkv = jax.ShapeDtypeStruct((48, 3200, 9600), jax.numpy.bfloat16)
  assert ckpt._restore_gb({"qkv": qkv}) == 3
  assert ckpt._restore_gb({"small": jax.ShapeDtypeStruct((4,), np.float32)}) == ckpt.CONCURRENT_GB
