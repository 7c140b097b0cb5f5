"""One process of a multi-process input-pipeline run: reads its shard, assembles the global
batches on the mesh, gathers them back and (process 0) writes what each global batch held.

  python two_process_data.py PREPARED PORT PROCESS_ID NUM_PROCESSES LOCAL_DEVICES OUT_JSON
"""

import json
import os
import sys

prepared, port, pid, nproc, ndev, out = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if int(nproc) > 1:
  jax.distributed.initialize(
    coordinator_address=f"localhost:{port}", num_processes=int(nproc), process_id=int(pid)
  )

from visage_jax.data.pipeline import global_batch, make_loader  # noqa: E402
from visage_jax.data.prepare import data_source  # noqa: E402
from visage_jax.runtime import parallel  # noqa: E402

ds, _ = data_source(prepared, "train")
loader = make_loader(
  ds,
  num_frames=4,
  global_batch=4,
  process_index=jax.process_index(),
  process_count=jax.process_count(),
  seed=5,
  num_epochs=2,
)
mesh = parallel.make_mesh()
sharding = parallel.batch_sharding(mesh)
batches = []
for local in loader:
  g = global_batch(mesh, {k: local[k] for k in ("video", "start", "frames")})
  video, start, frames = g["video"], g["start"], g["frames"]
  sums = jax.jit(lambda f: f.astype(np.int64).sum(axis=(1, 2, 3, 4)), out_shardings=sharding)(
    frames
  )
  got = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (video, start, sums)]
  names = [bytes(v).rstrip(b"\0").decode() for v in got[0]]
  batches.append(sorted(zip(names, got[1].tolist(), got[2].tolist())))
if jax.process_index() == 0:
  with open(out, "w") as f:
    json.dump(
      {"devices": jax.device_count(), "processes": jax.process_count(), "batches": batches}, f
    )
