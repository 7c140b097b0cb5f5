"""Run the evaluation step on one device and sharded over 8 emulated CPU devices; print the
largest difference of the per-frame and per-video numbers as JSON. Used by test_evaluate.py in a
child process, since the device count is fixed when JAX starts."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from visage_jax import checkpoint as ckpt  # noqa: E402
from visage_jax.evaluation import evaluate
from visage_jax.runtime import parallel  # noqa: E402


def main(ckpt_dir):
  assert len(jax.devices()) == 8, jax.devices()
  cfg, model = ckpt.load_model(ckpt_dir)
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  b, t, h, w = 8, cfg.model.backbone.num_frames, 36, 64
  size = cfg.model.backbone.img_size
  batch = {
    "clip": rng.standard_normal((b, t, size, size, 3)).astype(np.float32),
    "gt": rng.random((b, t, h, w)).astype(np.float32) ** 4,
    "fixations": (rng.random((b, t, h, w)) > 0.97).astype(np.int32),
    "mask": np.ones((b, t), bool),
  }
  batch["mask"][-1, -3:] = False
  batch["fixations"][0, 1] = 0  # a frame without fixations
  # The single-device reference runs the same per-device batch (one clip) that each of the 8
  # devices runs: XLA on CPU may vectorise a batch of 8 differently from a batch of 1, which moves
  # maps by float32 noise and can flip an 8-bit level; sharding itself must add nothing.
  one = evaluate.make_eval_step(graphdef)
  parts = [
    jax.device_get(one(state, jax.tree.map(lambda x, i=i: x[i : i + 1], batch))) for i in range(b)
  ]
  single = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
  mesh = parallel.make_mesh(data=4, fsdp=2)
  sharded_step = evaluate.make_eval_step(graphdef, mesh=mesh)
  sharded_out = sharded_step(state, batch)
  spec = sharded_out["maps"]["fused"].sharding.spec
  sharded = jax.device_get(sharded_out)
  diffs = []
  for a, c in zip(jax.tree.leaves(single["metrics"]), jax.tree.leaves(sharded["metrics"])):
    assert np.array_equal(np.isnan(a), np.isnan(c))
    ok = ~np.isnan(a)
    diffs.append(float(np.max(np.abs(a[ok] - c[ok]))) if ok.any() else 0.0)
  reports = []
  for res in (single, sharded):
    agg = evaluate.Aggregator()
    for i in range(b):
      per = jax.tree.map(lambda x, i=i: x[i], res["metrics"])
      agg.add(f"video{i // 2}", per, batch["mask"][i])
    reports.append(agg.report())
  video_diffs = []
  for v in reports[0]["per_video"]:
    for source in ("expert1", "expert2", "fused"):
      for variant in ("ntire2026", "mit"):
        for m in evaluate.METRICS:
          x = reports[0]["per_video"][v][source][variant][m]
          y = reports[1]["per_video"][v][source][variant][m]
          video_diffs.append(abs(x - y))
  undefined = reports[0]["overall"]["fused"]["ntire2026"]["nss"]["undefined_frames"]
  print(
    json.dumps(
      {
        "frame_max_diff": max(diffs),
        "video_max_diff": max(video_diffs),
        "devices": len(jax.devices()),
        "batch_spec": str(spec),
        "undefined_nss_frames": undefined,
        "fused_cc": reports[0]["overall"]["fused"]["ntire2026"]["cc"]["challenge"],
      }
    )
  )


if __name__ == "__main__":
  main(sys.argv[1])
