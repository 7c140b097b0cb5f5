"""Ours against PyTorch and against the commit this CPU work started from, in one interleaved run.

    python benchmarks/vs_pytorch.py [--rounds=3] [--baseline=DIR] [--out=result.json]

Three worker processes, each set up (built, compiled, warmed) once, then timed in turn, round after
round, so that the machine's drift falls on all of them alike:
  - `main`: this repository at BASELINE_COMMIT (a temporary `git worktree`, or `--baseline=DIR`);
  - `ours`: this checkout;
  - `torch`: the two decoder experts written in PyTorch for this benchmark from
    docs/model.md §4–6 (channels first, as the original runs), eager and under
    `torch.compile`, loaded with the weights of our model (their maps are checked equal to ours
    first).
Jobs, at the mid-size configuration of `predict_speed.py` (width 384, depth 12, 6 heads, MLP 1536,
4 taps, 8 frames at 224², LoRA r16, neck 128, decoder 32), float32, batch 1, each tree's defaults:
  - `forward`: the dual-expert model, clip → fused map (main, ours);
  - `train_step`: one stage-2 training step of Expert 2 with its auxiliary heads (main, ours);
  - `decoders_forward`: both experts' necks and decoders, taps → maps, evaluation mode;
  - `decoders_train`: the same plus Expert 2's auxiliary maps in training mode, forward and the
    gradients of every decoder weight (main, ours, torch eager, torch compiled).
Prints one JSON line per round and a summary with the median seconds per call and the ratios.
Random weights: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BASELINE_COMMIT = "1d54be4fbc4a955796bc1799a2c5b291d6a67317"
JAX_JOBS = ("forward", "train_step", "decoders_forward", "decoders_train")
TORCH_JOBS = ("decoders_forward", "decoders_train")
CALLS = {"forward": 2, "train_step": 1, "decoders_forward": 3, "decoders_train": 2}


# ----------------------------------------------------------------------------------------------
# the JAX side: runs in either tree (only APIs that both have)


def _mid_config(tree: str):
  """`predict_speed.mid_config` of `tree` (which puts that tree first on the path)."""
  sys.path.insert(0, os.path.join(tree, "benchmarks"))
  from predict_speed import mid_config

  return mid_config()


def _random_taps(cfg, experts: int):
  import numpy as np

  b = cfg.model.backbone
  grid = (b.num_frames // b.tubelet_size, b.img_size // b.patch_size, b.img_size // b.patch_size)
  rng = np.random.default_rng(0)
  taps = [rng.standard_normal((experts, 1, *grid, b.embed_dim), np.float32) for _ in b.taps]
  cls = rng.standard_normal((experts, 1, b.embed_dim), np.float32)
  return taps, cls


def jax_jobs(tree: str):
  """{job: a function that runs one call and waits for it}, set up and compiled."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from visage_jax.models.visage import ViSAGE
  from visage_jax.training import step as train_step

  cfg = _mid_config(tree)
  b = cfg.model.backbone
  model = ViSAGE(cfg.model, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  clip = jnp.zeros((1, b.num_frames, b.img_size, b.img_size, 3), jnp.float32)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)["fused"])
  taps, cls = _random_taps(cfg, 2)
  decoders_forward = jax.jit(lambda s, taps, cls: fused_decoders(nnx.merge(graphdef, s), taps, cls))

  train_model = ViSAGE(cfg.model, rngs=nnx.Rngs(0))
  train_step.set_batchnorm_mode(train_model, train=True)
  in_decoders = nnx.Any(nnx.PathContains("expert1"), nnx.PathContains("expert2"))
  tgraph, tparams, trest = nnx.split(train_model, nnx.All(nnx.Param, in_decoders), ...)

  def decoders_loss(params, rest, taps, cls):
    outs = run_decoders(nnx.merge(tgraph, params, rest, copy=True), taps, cls, with_aux=True)
    return sum(jnp.mean(v * v) for o in outs for v in o.values() if v.ndim == 4)

  decoders_train = jax.jit(jax.grad(decoders_loss))
  step, step_args = _train_step(cfg, jax, np, train_step)
  calls = {
    "forward": lambda: forward(state, clip),
    "train_step": lambda: step(*step_args),
    "decoders_forward": lambda: decoders_forward(state, taps, cls),
    "decoders_train": lambda: decoders_train(tparams, trest, taps, cls),
  }
  return {k: (lambda f=f: jax.block_until_ready(f())) for k, f in calls.items()}


def run_decoders(model, taps, cls, *, with_aux: bool = False) -> list[dict]:
  """Each expert's neck and decoder on its own taps (expert e reads taps[…][e])."""
  names = ("expert1", "expert2")
  return [
    getattr(model, n)([t[e] for t in taps], cls[e], with_aux=with_aux) for e, n in enumerate(names)
  ]


def fused_decoders(model, taps, cls):
  """Both decoders' maps fused in logit space, as the model fuses them."""
  from visage_jax.models.visage import logit_fusion

  return logit_fusion([o["map"] for o in run_decoders(model, taps, cls)], 0.5)


def _train_step(cfg, jax, np, train_step):
  cfg = cfg.copy_and_resolve_references()
  cfg.train.stage, cfg.train.expert, cfg.train.batch_size = 2, 2, 1
  model = train_step.init_model(cfg)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  tx = train_step.make_optimizer(cfg)
  step = jax.jit(train_step.make_step(graphdef, cfg, tx))
  t, s = cfg.model.backbone.num_frames, cfg.model.output_size
  rng = np.random.default_rng(0)
  batch = {
    "frames": rng.integers(0, 255, (1, t, s, s, 3), dtype=np.uint8),
    "saliency": rng.random((1, t, s, s), dtype=np.float32),
    "fixations": (rng.random((1, t, s, s)) > 0.999).astype(np.float32),
    "mask": np.ones((1, t), np.float32),
  }
  state = train_step.new_state(cfg, tx, trainable, stats)
  return step, (state, frozen, batch, jax.random.key(0))


# ----------------------------------------------------------------------------------------------
# the PyTorch side: our two decoders from docs/model.md, with the original's parameter names


def torch_modules():
  """(Expert1, Expert2) module classes; built here so that torch is imported by its worker only."""
  import torch
  import torch.nn.functional as F
  from torch import nn

  def groups(c):
    return next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0)

  def norm(c):
    return nn.GroupNorm(groups(c), c, eps=1e-5)

  def resize(x, size):
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)

  def per_frame(head, x):  # (B, C, T, H, W) → head on (B·T, C, H, W) → (B, T, C', H', W')
    b, c, t, h, w = x.shape
    y = head(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:])

  class ResBlend(nn.Module):  # §5: Conv-BN-ReLU-Conv-BN + shortcut, ReLU
    def __init__(self, cin, cout):
      super().__init__()
      self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
      self.bn1 = nn.BatchNorm3d(cout)
      self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
      self.bn2 = nn.BatchNorm3d(cout)
      self.shortcut = (
        nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout))
        if cin != cout
        else nn.Identity()
      )

    def forward(self, x):
      out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
      return F.relu(out + self.shortcut(x))

  class Projection(nn.Module):  # 1×1×1 conv with its own name, as the original nests it
    def __init__(self, cin, cout):
      super().__init__()
      self.proj = nn.Conv3d(cin, cout, 1)

    def forward(self, x):
      return self.proj(x)

  class CenterBias(nn.Module):
    def __init__(self, size):
      super().__init__()
      self.cx, self.cy = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
      self.sigma, self.weight = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.zeros(()))
      grid = torch.linspace(-1, 1, size)
      self.register_buffer("xx", grid[None, :].expand(size, size).clone())
      self.register_buffer("yy", grid[:, None].expand(size, size).clone())

    def forward(self):
      sq = (self.xx - self.cx) ** 2 + (self.yy - self.cy) ** 2
      return self.weight * torch.exp(-sq / (2 * self.sigma**2 + 1e-7))

  class Decoder1(nn.Module):
    def __init__(self, neck, dim, size):
      super().__init__()
      self.temp_attn = nn.Module()
      self.temp_attn.conv = nn.Conv1d(neck, neck, 3, padding=1)
      self.proj23_attn = nn.Conv3d(neck, dim, 1)
      self.upsample5, self.upsample11 = Projection(neck, dim), Projection(neck, dim)
      self.proj17 = nn.Conv3d(neck, dim, 1)
      self.conv17 = ResBlend(dim, dim)
      self.blend11, self.blend5 = ResBlend(2 * dim, dim), ResBlend(2 * dim, dim)
      self.final_head = nn.Sequential(
        nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(dim // 2),
        nn.ReLU(),
        nn.Conv2d(dim // 2, 1, 3, padding=1),
      )
      self.center_bias = CenterBias(size)
      self.size = size

    def forward(self, f5, f11, f17, f23, gamma, beta):
      pooled = torch.sigmoid(self.temp_attn.conv(f23.mean(dim=(3, 4))))
      attn = self.proj23_attn(pooled[..., None, None])
      x17 = self.conv17(self.proj17(f17) * attn)
      x11 = self.upsample11(f11) * attn
      x11 = self.blend11(torch.cat([x11, resize(x17, x11.shape[2:])], 1))
      x5 = self.upsample5(f5) * attn
      x5 = self.blend5(torch.cat([x5, resize(x11, x5.shape[2:])], 1))
      x5 = x5 * (1 + gamma[:, :, None, None, None]) + beta[:, :, None, None, None]
      x = resize(x5, (x5.shape[2], self.size, self.size))
      return per_frame(self.final_head, x)[:, :, 0] + self.center_bias()

  class Expert1(nn.Module):
    def __init__(self, d, neck, dim, size):
      super().__init__()
      self.dim_reducers = nn.ModuleList([nn.Conv3d(d, neck, 1) for _ in range(4)])
      self.decoder = Decoder1(neck, dim, size)
      self.film_gamma, self.film_beta = nn.Linear(d, dim), nn.Linear(d, dim)

    def forward(self, taps, cls, with_aux=False):
      feats = [r(t) for r, t in zip(self.dim_reducers, taps)]
      logits = self.decoder(*feats, self.film_gamma(cls), self.film_beta(cls))
      return {"map": torch.sigmoid(logits)}

  class Proj2(nn.Module):  # §6 Proj: conv, GroupNorm, GELU
    def __init__(self, cin, cout):
      super().__init__()
      self.block = nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), norm(cout), nn.GELU())

    def forward(self, x):
      return self.block(x)

  class Fuse(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
      self.norm1 = norm(cout)
      self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
      self.norm2 = norm(cout)
      self.shortcut = (
        nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), norm(cout))
        if cin != cout
        else nn.Identity()
      )

    def forward(self, x):
      out = self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x)))))
      return F.gelu(out + self.shortcut(x))

  class Head(nn.Module):
    def __init__(self, dim, hidden, size):
      super().__init__()
      self.pre_2d = nn.Sequential(
        nn.Conv3d(dim, hidden, 3, padding=1, bias=False), norm(hidden), nn.GELU()
      )
      self.head_2d = nn.Sequential(
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
        norm(hidden),
        nn.GELU(),
        nn.Conv2d(hidden, 1, 3, padding=1),
      )
      self.size = size

    def forward(self, x):
      x = self.pre_2d(x)
      x = resize(x, (x.shape[2], self.size, self.size))
      return per_frame(self.head_2d, x)[:, :, 0]

  class Decoder2(nn.Module):
    def __init__(self, neck, dim, size):
      super().__init__()
      hidden = max(dim // 2, 64)
      self.proj5, self.proj11 = Proj2(neck, dim), Proj2(neck, dim)
      self.proj17, self.proj23 = Proj2(neck, dim), Proj2(neck, dim)
      self.temporal_gate = nn.Module()
      self.temporal_gate.depthwise = nn.Conv1d(dim, dim, 3, padding=1, groups=dim, bias=False)
      self.temporal_gate.pointwise = nn.Conv1d(dim, dim, 1)
      self.refine23 = Fuse(dim, dim)
      self.fuse17, self.fuse11, self.fuse5 = (Fuse(2 * dim, dim) for _ in range(3))
      self.refine3d = nn.Sequential(Fuse(dim, dim), Fuse(dim, dim))
      self.main_head = Head(dim, hidden, size)
      self.aux_heads = nn.ModuleDict({k: Head(dim, hidden, size) for k in ("p23", "p17", "p11")})

    def forward(self, f5, f11, f17, f23, with_aux):
      gate = self.temporal_gate
      p23 = self.proj23(f23)
      g = torch.sigmoid(gate.pointwise(gate.depthwise(p23.mean(dim=(3, 4)))))
      p23 = self.refine23(p23 * g[..., None, None])
      p17 = self.fuse17(torch.cat([self.proj17(f17), resize(p23, f17.shape[2:])], 1))
      p11 = self.fuse11(torch.cat([self.proj11(f11), resize(p17, f11.shape[2:])], 1))
      p5 = self.fuse5(torch.cat([self.proj5(f5), resize(p11, f5.shape[2:])], 1))
      out = {"map": self.main_head(self.refine3d(p5))}
      if with_aux:
        for k, p in (("p23", p23), ("p17", p17), ("p11", p11)):
          out[f"aux_{k}"] = self.aux_heads[k](p)
      return out

  class Expert2(nn.Module):
    def __init__(self, d, neck, dim, size):
      super().__init__()
      self.dim_reducers = nn.ModuleList([nn.Conv3d(d, neck, 1) for _ in range(4)])
      self.decoder = Decoder2(neck, dim, size)

    def forward(self, taps, cls, with_aux=False):
      feats = [r(t) for r, t in zip(self.dim_reducers, taps)]
      return {k: torch.sigmoid(v) for k, v in self.decoder(*feats, with_aux).items()}

  return Expert1, Expert2


def _torch_weights(jax_model, expert: str) -> dict:
  """Our model's weights of one expert under the original's names, in PyTorch's layouts."""
  import numpy as np
  from flax import nnx

  sys.path.insert(0, REPO)
  from conversion.export import original_layout
  from conversion.keymap import slots_for

  flat = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(jax_model))}
  mine = {p: a for p, a in flat.items() if p[0] == expert}
  return {
    slot.name: original_layout(mine[slot.path], slot) for slot in slots_for(mine, (expert,), 0)
  }


def torch_jobs(tree: str):
  """{job: one call}, eager and compiled, after checking the torch maps equal ours."""
  import numpy as np
  import torch
  from flax import nnx

  from visage_jax.models.visage import ViSAGE

  torch.set_num_threads(os.cpu_count() or 1)
  cfg = _mid_config(tree)
  m = cfg.model
  jax_model = ViSAGE(m, rngs=nnx.Rngs(0))
  shape = (m.backbone.embed_dim, m.neck_dim, m.decoder_dim, m.output_size)
  experts = []
  for cls_, name in zip(torch_modules(), ("expert1", "expert2")):
    module = cls_(*shape)
    weights = {k: torch.from_numpy(v.copy()) for k, v in _torch_weights(jax_model, name).items()}
    missing = module.load_state_dict(weights, strict=False)
    derived = ("center_bias.xx", "center_bias.yy", "num_batches_tracked")
    stray = [k for k in missing.missing_keys if not k.endswith(derived)]
    if stray or missing.unexpected_keys:
      raise SystemExit(f"torch decoders: missing {stray}, unexpected {missing.unexpected_keys}")
    experts.append(module)
  taps, cls = _random_taps(cfg, 2)
  # (E, B, T, H, W, D) → channels first per expert
  ttaps = [[torch.from_numpy(np.moveaxis(t[e], -1, 1).copy()) for t in taps] for e in (0, 1)]
  tcls = [torch.from_numpy(cls[e].copy()) for e in (0, 1)]

  def fused(outs):
    p1, p2 = (o["map"].clamp(1e-6, 1 - 1e-6) for o in outs)
    return torch.sigmoid(0.5 * torch.logit(p1) + 0.5 * torch.logit(p2))

  def forward(e1, e2):
    with torch.no_grad():
      return fused([e1(ttaps[0], tcls[0]), e2(ttaps[1], tcls[1])])

  def train_call(e1, e2, modules):
    outs = [e1(ttaps[0], tcls[0], True), e2(ttaps[1], tcls[1], True)]
    loss = sum((v * v).mean() for o in outs for v in o.values())
    params = [p for mod in modules for p in mod.parameters()]
    return torch.autograd.grad(loss, params)

  for e in experts:
    e.eval()
  ours = np.asarray(fused_decoders(jax_model, taps, cls))
  diff = float(np.max(np.abs(ours - forward(*experts).numpy())))
  compiled = [torch.compile(e) for e in experts]
  jobs = {
    "torch_eager/decoders_forward": lambda: forward(*experts),
    "torch_compile/decoders_forward": lambda: forward(*compiled),
    "torch_eager/decoders_train": lambda: train_call(*experts, experts),
    "torch_compile/decoders_train": lambda: train_call(*compiled, experts),
  }

  def in_mode(job, fn):
    def call():
      for e in experts:
        e.train("train" in job)
      return fn()

    return call

  return {k: in_mode(k, f) for k, f in jobs.items()}, {"max_map_difference_vs_ours": diff}


# ----------------------------------------------------------------------------------------------
# workers and the interleaved rounds


def worker(kind: str, tree: str) -> None:
  """Set up, print one `ready` JSON line, then answer `JOB CALLS` lines with seconds per call."""
  sys.path.insert(0, tree)
  os.chdir(tree)
  if kind == "torch":
    jobs, info = torch_jobs(tree)
  else:
    jobs, info = {f"{kind}/{k}": f for k, f in jax_jobs(tree).items()}, {}
  for fn in jobs.values():  # compile and warm up
    fn()
  import visage_jax

  info["code"] = os.path.dirname(os.path.dirname(visage_jax.__file__))
  print(json.dumps({"ready": sorted(jobs), **info}), flush=True)
  for line in sys.stdin:
    job, calls = line.split()
    t0 = time.perf_counter()
    for _ in range(int(calls)):
      jobs[job]()
    print(json.dumps({"job": job, "s": (time.perf_counter() - t0) / int(calls)}), flush=True)


class Worker:
  def __init__(self, kind: str, tree: str):
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={kind}", f"--tree={tree}"]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.kind = kind

  def read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"vs_pytorch: the {self.kind} worker stopped (exit {self.proc.wait()})")
    return json.loads(line)

  def time(self, job: str, calls: int) -> float:
    self.proc.stdin.write(f"{job} {calls}\n")
    self.proc.stdin.flush()
    return self.read()["s"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def baseline_tree(path: str | None):
  """(directory of the baseline checkout, a function that removes it if we made it)."""
  if path:
    if not os.path.isdir(os.path.join(path, "visage_jax")):
      raise SystemExit(f"vs_pytorch: --baseline={path} is not a checkout of this repository")
    return path, lambda: None
  tmp = tempfile.mkdtemp(prefix="visage-baseline-")
  add = ["git", "-C", REPO, "worktree", "add", "--detach", tmp, BASELINE_COMMIT]
  made = subprocess.run(add, capture_output=True, text=True)
  if made.returncode:
    os.rmdir(tmp)
    why = made.stderr.strip().splitlines()[-1] if made.stderr.strip() else "git failed"
    raise SystemExit(f"vs_pytorch: cannot check out {BASELINE_COMMIT[:12]}: {why}; use --baseline")
  remove = ["git", "-C", REPO, "worktree", "remove", "--force", tmp]
  return tmp, lambda: subprocess.run(remove, check=True, capture_output=True)


def summary(times: dict) -> dict:
  med = {k: statistics.median(v) for k, v in times.items()}
  ratio = lambda a, b: round(med[a] / med[b], 2)  # noqa: E731
  out = {"median_s": {k: round(v, 3) for k, v in med.items()}, "speedup": {}}
  for job in JAX_JOBS:
    out["speedup"][f"{job}: ours vs main"] = ratio(f"main/{job}", f"ours/{job}")
  for job in TORCH_JOBS:
    for torch_kind in ("torch_eager", "torch_compile"):
      out["speedup"][f"{job}: ours vs {torch_kind}"] = ratio(f"{torch_kind}/{job}", f"ours/{job}")
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--baseline", help="a checkout of BASELINE_COMMIT (default: a git worktree)")
  ap.add_argument("--out", help="also write the summary JSON here")
  ap.add_argument("--worker", help=argparse.SUPPRESS)
  ap.add_argument("--tree", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    return worker(args.worker, args.tree)
  base, remove_base = baseline_tree(args.baseline)
  try:
    workers = [Worker("main", base), Worker("ours", REPO), Worker("torch", REPO)]
    print(f"setting up (compiling) {len(workers)} workers …", file=sys.stderr, flush=True)
    ready = {w.kind: w.read() for w in workers}
    print(json.dumps({"setup": ready}), flush=True)
    times = {}
    for r in range(args.rounds):
      for w in workers:
        for job in ready[w.kind]["ready"]:
          times.setdefault(job, []).append(w.time(job, CALLS[job.split("/")[1]]))
      print(json.dumps({"round": r, "s": {k: round(v[-1], 3) for k, v in times.items()}}))
    for w in workers:
      w.close()
  finally:
    remove_base()
  result = {
    "machine": f"{os.cpu_count()} CPU cores",
    "torch_max_map_difference_vs_ours": ready["torch"]["max_map_difference_vs_ours"],
    **summary(times),
  }
  print(json.dumps(result, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
