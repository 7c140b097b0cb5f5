"""The InternVideo2 vision encoder as ViSAGE uses it: patch and position embedding, pre-norm
blocks with q/k RMSNorm and LayerScale, the residual stream tapped after chosen blocks.

Every activation carries a leading expert axis E: the experts share the base weights and differ by
their LoRA, so their activations differ from the patch embedding on. Tokens are (E, B, N, D) with
N = 1 + T'·H'·W' (CLS first, then (t, h, w) with w fastest, as the original flattens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from visage_jax.models.layers import LayerScale, RMSNorm
from visage_jax.models.lora import LoRALinear, LoRAPatchEmbed
from visage_jax.runtime import parallel

# The names a block gives its costly intermediate results (`checkpoint_name`), which the named
# rematerialisation policies keep: the qkv projection, the attention core's output, the output
# projection, the MLP's hidden layer (before the GELU) and its output.
BLOCK_NAMES = ("qkv", "attention", "proj", "fc1", "fc2")
_SAVED_NAMES = {
  "save_attention": ("attention",),
  "save_qkv_attention": ("qkv", "attention"),
  "save_matmuls": BLOCK_NAMES,
}
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  **{
    name: jax.checkpoint_policies.save_only_these_names(*saved)
    for name, saved in _SAVED_NAMES.items()
  },
}


def stored_widths(policy: str, embed_dim: int, hidden: int) -> int:
  """How many numbers a block keeps per token for its backward pass under a remat `policy`
  (roughly: the block's input always; without remat also the norms' outputs, q/k/v and their
  norms, the attention output, the MLP's hidden layer before and after the GELU)."""
  d = embed_dim
  named = {"qkv": 3 * d, "attention": d, "proj": d, "fc1": hidden, "fc2": d}
  if policy == "none":
    return 10 * d + 2 * hidden
  if policy == "full":
    return d
  if policy in _SAVED_NAMES:
    return d + sum(named[n] for n in _SAVED_NAMES[policy])
  return d + sum(named.values())  # "dots", "dots_no_batch": every matmul's output


ATTENTION_IMPLS = ("auto", "xla", "cudnn", "chunked", "per_head")
# cuDNN's fused attention takes (and differentiates) sequences padded to a multiple of this; the
# padded keys are masked by their length, the padded queries' rows dropped.
CUDNN_SEQ_MULTIPLE = 64


def resolve_attention_impl(impl, dtype, tokens: int | None = None, chunk: int = 1024):
  """ "auto": cuDNN's fused kernel on a GPU in bf16/fp16 (2.2× the 6B model's speed on an H100,
  and no N×N scores in memory), in inference and in training: the sequence is padded to a length
  its backward takes (`padded_attention`); on a CPU one (batch, head) at a time ("per_head");
  elsewhere XLA's, by query blocks ("chunked") once the sequence is longer than two blocks (6B at
  20 frames: 5121 tokens, whose full score matrices would be held in float32, several at once
  when differentiating)."""
  if impl in (None, "xla", "cudnn", "chunked", "per_head"):
    return impl
  if impl != "auto":
    raise ValueError(
      f"model.backbone.attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}"
    )
  backend = jax.default_backend()
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  if backend == "cpu":
    return "per_head"
  if tokens is not None and tokens > 2 * chunk:
    return "chunked"
  return "xla"


def padded_attention(q, k, v, *, scale: float, implementation: str, multiple: int):
  """`dot_product_attention` over the sequence padded to a multiple of `multiple` (q, k, v:
  (B, N, H, Dh)). The padded keys are masked by their length (no query attends to them) and the
  padded queries' rows are dropped, so values and gradients are those of the N tokens alone.

  JAX refuses cuDNN's fused backward at this model's token counts, which are always odd (one CLS
  token and an even number of patches: "Unsupported sequence length Q 5121, KV 5121" on an H200
  with jax 0.11.2); a padded length is taken both ways."""
  b, n, _, _ = q.shape
  padded = -(-n // multiple) * multiple
  if padded == n:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation)
  widths = ((0, 0), (0, padded - n), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
  lengths = jnp.full((b,), n, jnp.int32)
  out = jax.nn.dot_product_attention(
    q, k, v, scale=scale, key_value_seq_lengths=lengths, implementation=implementation
  )
  return out[:, :n]


def num_tokens(backbone_cfg) -> int:
  """The sequence length of one clip: the CLS token and the patches of every tubelet."""
  b = backbone_cfg
  return 1 + (b.num_frames // b.tubelet_size) * (b.img_size // b.patch_size) ** 2


def chunked_attention(q, k, v, *, scale: float, chunk: int):
  """XLA's attention one block of `chunk` queries at a time (q, k, v: (B, N, H, Dh)). Each query
  row's softmax still spans every key, so the numbers are XLA's; only one block's scores exist at
  a time, and under differentiation each block is recomputed rather than stored."""
  b, n, h, dh = q.shape
  blocks = -(-n // chunk)
  q = jnp.pad(q, ((0, 0), (0, blocks * chunk - n), (0, 0), (0, 0)))
  q = jnp.moveaxis(q.reshape(b, blocks, chunk, h, dh), 1, 0)

  @jax.checkpoint
  def block(qb):
    return jax.nn.dot_product_attention(qb, k, v, scale=scale, implementation="xla")

  out = jax.lax.map(block, q)
  return jnp.moveaxis(out, 0, 1).reshape(b, blocks * chunk, h, dh)[:, :n]


def per_head_attention(q, k, v, *, scale: float, recompute: bool):
  """Softmax attention one (batch, head) pair at a time (q, k, v: (B, N, H, Dh)), as 2-D matmuls.

  XLA's CPU backend runs a batched dot several times slower than the same dots one by one
  (mid-size model, 2049 tokens: 0.13 s per layer against 0.39 s for `dot_product_attention`), and
  only one head's N×N scores exist at a time. With `recompute`, each head's scores are recomputed
  when differentiating instead of stored (for long sequences)."""
  b, n, h, dh = q.shape

  def one_head(qkv):
    qh, kh, vh = qkv
    probs = jax.nn.softmax((qh @ kh.T) * scale, axis=-1)
    return probs @ vh

  if recompute:
    one_head = jax.checkpoint(one_head)
  by_head = lambda x: jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, n, dh)  # noqa: E731
  out = jax.lax.map(one_head, (by_head(q), by_head(k), by_head(v)))
  return jnp.transpose(out.reshape(b, h, n, dh), (0, 2, 1, 3))


def active_lora_targets(model_cfg) -> tuple[str, ...]:
  """Module-name suffixes that carry an acting LoRA (peft's suffix match; see docs/model.md §3).

  Under the fused MLP the fc1/fc2 adapters are bypassed by the original, so we do not build them.
  """
  targets = tuple(model_cfg.lora.targets)
  if model_cfg.backbone.mlp_impl == "fused":
    targets = tuple(t for t in targets if t not in ("fc1", "fc2"))
  elif model_cfg.backbone.mlp_impl != "plain":
    raise ValueError(
      f"model.backbone.mlp_impl must be 'fused' or 'plain', got {model_cfg.backbone.mlp_impl!r}"
    )
  return targets


def _lora_args(name: str, cfg, targets, with_lora: bool) -> dict:
  """rank and merged flag of one LoRA-capable layer."""
  active = name in targets and cfg.lora.enabled
  return dict(
    rank=cfg.lora.rank if with_lora and active and not cfg.lora_merged else None,
    merged=bool(with_lora and active and cfg.lora_merged),
  )


class Attention(nnx.Module):
  def __init__(self, cfg, *, num_experts, lora_targets, with_lora, rngs):
    b = cfg.backbone
    d = b.embed_dim
    pdt = jnp.dtype(cfg.param_dtype)
    lora = dict(num_experts=num_experts, alpha=cfg.lora.alpha, param_dtype=pdt, rngs=rngs)
    self.qkv = LoRALinear(
      d, 3 * d, use_bias=False, **_lora_args("qkv", cfg, lora_targets, with_lora), **lora
    )
    self.proj = LoRALinear(
      d, d, use_bias=True, **_lora_args("proj", cfg, lora_targets, with_lora), **lora
    )
    self.q_norm = RMSNorm(d, eps=b.qk_norm_eps, param_dtype=pdt)
    self.k_norm = RMSNorm(d, eps=b.qk_norm_eps, param_dtype=pdt)
    self.num_heads = b.num_heads
    self.attention_impl = b.attention_impl
    self.attention_chunk = int(b.get("attention_chunk", 1024))

  def __call__(self, x, *, dropout_rate=0.0, rngs=(None, None)):
    e, bsz, n, d = x.shape
    h = self.num_heads
    qkv = checkpoint_name(self.qkv(x, dropout_rate=dropout_rate, dropout_rng=rngs[0]), "qkv")
    q, k, v = jnp.split(qkv, 3, axis=-1)
    # q/k RMSNorm over the whole width, all heads together, before the head split.
    q, k = self.q_norm(q), self.k_norm(k)

    # Fold the expert axis into the batch *behind* it, so that a batch sharded over devices
    # stays sharded through the reshape (E in front would force an all-gather).
    def heads(x):
      return jnp.swapaxes(x, 0, 1).reshape(bsz * e, n, h, d // h)

    scale = float((d // h) ** -0.5)
    impl = resolve_attention_impl(self.attention_impl, q.dtype, n, self.attention_chunk)
    if impl == "cudnn":
      out = padded_attention(
        heads(q),
        heads(k),
        heads(v),
        scale=scale,
        implementation="cudnn",
        multiple=CUDNN_SEQ_MULTIPLE,
      )
    elif impl == "chunked":
      out = chunked_attention(heads(q), heads(k), heads(v), scale=scale, chunk=self.attention_chunk)
    elif impl == "per_head":
      recompute = n > 2 * self.attention_chunk
      out = per_head_attention(heads(q), heads(k), heads(v), scale=scale, recompute=recompute)
    else:
      out = jax.nn.dot_product_attention(
        heads(q), heads(k), heads(v), scale=scale, implementation=impl
      )
    out = checkpoint_name(jnp.swapaxes(out.reshape(bsz, e, n, d), 0, 1), "attention")
    out = self.proj(out, dropout_rate=dropout_rate, dropout_rng=rngs[1])
    return checkpoint_name(out, "proj")


class Mlp(nnx.Module):
  def __init__(self, cfg, *, num_experts, lora_targets, with_lora, rngs):
    b = cfg.backbone
    d = b.embed_dim
    hidden = int(d * b.mlp_ratio)
    pdt = jnp.dtype(cfg.param_dtype)
    lora = dict(num_experts=num_experts, alpha=cfg.lora.alpha, param_dtype=pdt, rngs=rngs)
    self.fc1 = LoRALinear(
      d, hidden, use_bias=True, **_lora_args("fc1", cfg, lora_targets, with_lora), **lora
    )
    self.fc2 = LoRALinear(
      hidden, d, use_bias=True, **_lora_args("fc2", cfg, lora_targets, with_lora), **lora
    )
    # flash-attn's FusedMLP uses the tanh approximation; PyTorch's nn.GELU the exact erf.
    self.approximate_gelu = b.mlp_impl == "fused"

  def __call__(self, x, *, dropout_rate=0.0, rngs=(None, None)):
    x = checkpoint_name(self.fc1(x, dropout_rate=dropout_rate, dropout_rng=rngs[0]), "fc1")
    x = jax.nn.gelu(x, approximate=self.approximate_gelu)
    return checkpoint_name(self.fc2(x, dropout_rate=dropout_rate, dropout_rng=rngs[1]), "fc2")


DROP_PATH_STREAM = 0x44524F50  # folded into the step's key for the drop-path draws ("DROP")


def drop_path_rates(depth: int, rate: float) -> np.ndarray:
  """Each block's stochastic-depth rate, linear over depth as InternVideo2's builders spread
  `drop_path_rate` (`linspace(0, rate, depth)`)."""
  return np.linspace(0.0, rate, depth)


def drop_path_scales(key, rates, batch_shape) -> jax.Array:
  """timm's `DropPath` for every block and both residual branches at once: float32
  (len(rates), 2, *batch_shape), per sample 0 (dropped, probability p) or 1/(1 − p) (kept)."""
  keep = jnp.asarray(1.0 - np.asarray(rates), jnp.float32)  # as timm: 1 − p, then the dtype's
  keep = keep.reshape(-1, 1, *(1,) * len(batch_shape))
  shape = (len(rates), 2, *batch_shape)
  kept = jax.random.bernoulli(key, jnp.broadcast_to(keep, shape))
  return jnp.where(kept, 1.0 / keep, 0.0).astype(jnp.float32)


class Block(nnx.Module):
  """h = h + ls1·Attn(norm1(h)); h = h + ls2·MLP(norm2(h)); in training each branch may be
  dropped per sample (stochastic depth: `path_scales`, from `drop_path_scales`)."""

  def __init__(self, cfg, *, num_experts, lora_targets, with_lora, rngs):
    b = cfg.backbone
    pdt = jnp.dtype(cfg.param_dtype)
    kw = dict(num_experts=num_experts, lora_targets=lora_targets, with_lora=with_lora, rngs=rngs)
    self.norm1 = RMSNorm(b.embed_dim, eps=b.norm_eps, param_dtype=pdt)
    self.attn = Attention(cfg, **kw)
    self.ls1 = LayerScale(b.embed_dim, param_dtype=pdt)
    self.norm2 = RMSNorm(b.embed_dim, eps=b.norm_eps, param_dtype=pdt)
    self.mlp = Mlp(cfg, **kw)
    self.ls2 = LayerScale(b.embed_dim, param_dtype=pdt)

  def __call__(self, x, *, dropout_rate=0.0, rng=None, path_scales=None):
    """x: (E, B, N, D); path_scales: None, or (2, E, B) factors for the two branches."""
    keys = (None,) * 4 if rng is None else tuple(jax.random.split(rng, 4))

    def dropped(branch, k):
      if path_scales is None:
        return branch
      return branch * path_scales[k][:, :, None, None].astype(branch.dtype)

    x = x + dropped(self.ls1(self.attn(self.norm1(x), dropout_rate=dropout_rate, rngs=keys[:2])), 0)
    x = x + dropped(self.ls2(self.mlp(self.norm2(x), dropout_rate=dropout_rate, rngs=keys[2:])), 1)
    return x


class InternVideo2(nnx.Module):
  """The shared backbone. `__call__` returns the taps and the CLS token of the last tap."""

  def __init__(self, cfg, *, num_experts: int, with_lora: bool = True, rngs: nnx.Rngs):
    b = cfg.backbone
    if list(b.taps) != sorted(set(b.taps)) or not b.taps:
      raise ValueError(f"model.backbone.taps must be increasing block indices, got {b.taps}")
    if b.taps[0] < 0 or b.taps[-1] >= b.depth:
      raise ValueError(f"model.backbone.taps {b.taps} must lie in [0, depth={b.depth})")
    if b.embed_dim % b.num_heads:
      raise ValueError(f"embed_dim {b.embed_dim} is not divisible by num_heads {b.num_heads}")
    pdt = jnp.dtype(cfg.param_dtype)
    self.dtype = jnp.dtype(cfg.dtype)
    self.taps = tuple(int(t) for t in b.taps)
    self.depth = int(b.depth)
    self.scan_layers = bool(b.scan_layers)
    self.remat_policy = b.remat_policy
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.backbone.remat_policy must be one of {sorted(REMAT_POLICIES)}")
    self.lora_dropout = float(cfg.lora.dropout)
    self.drop_path_rate = float(b.drop_path_rate)
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"model.backbone.drop_path_rate must lie in [0, 1), got {b.drop_path_rate}")
    self.num_experts = num_experts
    targets = active_lora_targets(cfg)
    patch = (b.tubelet_size, b.patch_size, b.patch_size)
    self.grid = (
      b.num_frames // b.tubelet_size,
      b.img_size // b.patch_size,
      b.img_size // b.patch_size,
    )
    self.patch_embed = LoRAPatchEmbed(
      patch,
      b.in_chans,
      b.embed_dim,
      num_experts=num_experts,
      **_lora_args("proj", cfg, targets, with_lora),
      alpha=cfg.lora.alpha,
      param_dtype=pdt,
      rngs=rngs,
    )
    self.cls_token = nnx.Param(jnp.zeros((1, 1, b.embed_dim), pdt))
    n = int(np.prod(self.grid))
    self.pos_embed = nnx.Param(jnp.zeros((1, 1 + n, b.embed_dim), pdt))

    @nnx.split_rngs(splits=b.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return Block(
        cfg, num_experts=num_experts, lora_targets=targets, with_lora=with_lora, rngs=rngs
      )

    self.blocks = make_blocks(rngs)

  def __call__(self, clip, *, rng=None):
    """clip: (B, T, H, W, C) normalised frames.

    Returns taps: a list of (E, B, T', H', W', D), one per tapped block, and cls: (E, B, D), the
    CLS token of the last tap. Activations are in `model.dtype`.
    """
    b, t, hh, ww, _ = clip.shape
    gt, gh, gw = self.grid
    if (t, hh // self.patch_embed.patch[1], ww // self.patch_embed.patch[2]) != (gt, gh, gw):
      raise ValueError(
        f"clip of shape {clip.shape} does not match the model's {gt} frames of "
        f"{gh * self.patch_embed.patch[1]}×{gw * self.patch_embed.patch[2]}"
      )
    train = rng is not None
    if train:
      rng, patch_rng = jax.random.split(rng)
    else:
      patch_rng = None
    rate = self.lora_dropout if train else 0.0
    x = self.patch_embed(clip.astype(self.dtype), dropout_rate=rate, dropout_rng=patch_rng)
    e = x.shape[0]
    d = x.shape[-1]
    x = x.reshape(e, b, -1, d)
    cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (e, b, 1, d))
    x = jnp.concatenate([cls, x], axis=2)
    x = x + self.pos_embed[...].astype(self.dtype)

    path_scales = None
    if train and self.drop_path_rate > 0:  # stochastic depth: training only
      rates = drop_path_rates(self.depth, self.drop_path_rate)[: self.taps[-1] + 1]
      path_scales = drop_path_scales(jax.random.fold_in(rng, DROP_PATH_STREAM), rates, (e, b))
    hidden = self._run_blocks(x, rng=rng, dropout_rate=rate, path_scales=path_scales)
    taps = [h[:, :, 1:].reshape(e, b, gt, gh, gw, d) for h in hidden]
    return taps, hidden[-1][:, :, 0]

  def _run_blocks(self, x, *, rng, dropout_rate, path_scales=None):
    n_run = self.taps[-1] + 1
    graphdef, state = nnx.split(self.blocks)
    if n_run < self.depth:
      # Blocks after the last tap are never needed.
      state = jax.tree.map(lambda p: p[:n_run], state)
    rngs = jax.random.split(rng, n_run) if rng is not None else None

    def block_fn(layer_state, h, key, scales):
      block = nnx.merge(graphdef, layer_state)
      h = block(h, dropout_rate=dropout_rate, rng=key, path_scales=scales)
      return parallel.constrain_batch(h, axis=1)  # (E, B, N, D): split over B under a mesh

    policy = REMAT_POLICIES[self.remat_policy]
    if self.remat_policy != "none":
      block_fn = jax.checkpoint(block_fn, policy=policy, prevent_cse=not self.scan_layers)

    if not self.scan_layers:
      outs = []
      for i in range(n_run):
        layer_state = jax.tree.map(lambda p, i=i: p[i], state)
        key = None if rngs is None else rngs[i]
        x = block_fn(layer_state, x, key, None if path_scales is None else path_scales[i])
        if i in self.taps:
          outs.append(x)
      return outs

    # One scan over the stacked blocks. The residual stream is written into a buffer slot at each
    # tap; other blocks write into a spare slot that is dropped.
    num_taps = len(self.taps)
    slots = np.full((n_run,), num_taps, np.int32)
    for k, i in enumerate(self.taps):
      slots[i] = k
    buf = jnp.zeros((num_taps + 1, *x.shape), x.dtype)

    def body(carry, xs):
      h, buf = carry
      layer_state, slot, key, scales = xs
      h = block_fn(layer_state, h, key, scales)
      buf = jax.lax.dynamic_update_index_in_dim(buf, h, slot, axis=0)
      return (h, buf), None

    xs = (state, jnp.asarray(slots), rngs, path_scales)
    (_, buf), _ = jax.lax.scan(body, (x, buf), xs)
    return [buf[k] for k in range(num_taps)]
