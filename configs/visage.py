"""ViSAGE configuration with size presets.

`get_config("6b")`, `get_config("1b")` or `get_config("tiny")`; from the command line
`--config=configs/visage.py:6b --config.model.dtype=float32`.

Every number the model, the converter and the jobs use lives here. The `tiny` preset is the
configuration of the golden files in `tests/golden` (width 64, depth 8, 8 frames).
"""

import ml_collections

PRESETS = ("6b", "1b", "tiny")
# The numbers that make a preset's size: the backbone's (`_backbone`), the necks', decoders' and
# adapters'.
SIZES = {
  "6b": dict(neck_dim=1024, decoder_dim=256, lora_rank=64, lora_alpha=128.0),
  "1b": dict(neck_dim=1024, decoder_dim=256, lora_rank=64, lora_alpha=128.0),
  "tiny": dict(neck_dim=32, decoder_dim=16, lora_rank=4, lora_alpha=16.0),
}


def _backbone(preset: str) -> ml_collections.ConfigDict:
  b = ml_collections.ConfigDict()
  b.img_size = 224
  b.patch_size = 14
  b.tubelet_size = 1
  b.in_chans = 3
  b.num_frames = 20
  # The released InternVideo2 checkpoint is `-f4`: its position embedding covers 4 frames and is
  # stretched to `num_frames` when converting (docs/model.md §2).
  b.pretrained_num_frames = 4
  # "fused": flash-attn's fused MLP, as the released experts were trained and run: tanh GELU, and
  # the fc1/fc2 LoRA never applied. "plain": PyTorch's Mlp: erf GELU, every LoRA applied.
  b.mlp_impl = "fused"
  b.qk_norm_eps = 1e-6
  b.norm_eps = 1e-6
  if preset == "6b":
    b.embed_dim, b.depth, b.num_heads, b.mlp_ratio = 3200, 48, 25, 4.0
    b.taps = (11, 23, 35, 47)
  elif preset == "1b":
    b.embed_dim, b.depth, b.num_heads, b.mlp_ratio = 1408, 40, 16, 48 / 11
    b.taps = (9, 19, 29, 39)
  elif preset == "tiny":
    b.embed_dim, b.depth, b.num_heads, b.mlp_ratio = 64, 8, 4, 4.0
    b.taps = (1, 3, 5, 7)
    b.num_frames = 8
    b.mlp_impl = "plain"
  else:
    raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
  # Stochastic depth while training, in both stages (docs/model.md §9): InternVideo2's builders
  # set 0.3 (6B) and 0.25 (1B), spread linearly over the blocks; each block drops either residual
  # branch per sample. Off in evaluation and prediction. The tiny preset (tests) has none.
  b.drop_path_rate = {"6b": 0.3, "1b": 0.25, "tiny": 0.0}[preset]
  # Layers run as one `lax.scan` over stacked block weights (False: a Python loop, same numbers).
  b.scan_layers = True
  # Rematerialisation of each block: "none", "full" (save nothing), "dots" (save matmul outputs),
  # "dots_no_batch" (save matmuls without batch dimensions), or by the block's names:
  # "save_attention", "save_qkv_attention", "save_matmuls" (qkv, attention, proj, fc1, fc2).
  b.remat_policy = "none"
  # "auto": cuDNN's fused attention on a GPU in bf16/fp16 (the sequence padded to a multiple of
  # 64, the padding masked, so that its backward runs too); on a CPU one (batch, head) at a time
  # ("per_head"); elsewhere XLA's, by blocks of `attention_chunk` queries ("chunked") for
  # sequences longer than two blocks. Or "xla", "cudnn", "chunked", "per_head".
  b.attention_impl = "auto"
  b.attention_chunk = 1024
  return b


def get_config(arg: str = "6b") -> ml_collections.ConfigDict:
  """The whole config of a preset ("6b", "1b", "tiny")."""
  preset = (arg or "6b").lower()
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {arg!r}; choose one of {PRESETS}")
  config = ml_collections.ConfigDict()
  config.preset = preset
  config.model = _model(preset)
  config.loss = _loss()
  config.train = _train()
  config.data = _data()
  config.mesh = _mesh()
  return config


def _model(preset: str) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.backbone = _backbone(preset)
  m.neck_dim, m.decoder_dim = SIZES[preset]["neck_dim"], SIZES[preset]["decoder_dim"]
  # Which experts the model carries, in this order; their LoRA is stacked along a leading axis so
  # that one program runs them all over the shared base weights.
  m.experts = ("expert1", "expert2")
  # LoRA on the backbone (peft semantics: a target matches a module-name suffix, so "proj" covers
  # attn.proj and patch_embed.proj). Under mlp_impl="fused" the fc1/fc2 targets are inactive.
  m.lora = ml_collections.ConfigDict()
  # False for a model without adapters (stage 1, or converted from stage-1 expert files).
  m.lora.enabled = True
  m.lora.rank, m.lora.alpha = SIZES[preset]["lora_rank"], SIZES[preset]["lora_alpha"]
  m.lora.dropout = 0.05
  m.lora.targets = ("qkv", "proj", "fc1", "fc2")
  # True after `visage-convert --merge_lora`: each expert owns a copy of the backbone with its LoRA
  # folded in, and there are no LoRA weights left.
  m.lora_merged = False
  m.fusion_alpha = 0.5
  m.fusion_eps = 1e-6
  # Backbone precision. Necks and decoders always run in float32, as the original does.
  m.dtype = "float32" if preset == "tiny" else "bfloat16"
  m.param_dtype = "float32" if preset == "tiny" else "bfloat16"
  m.output_size = 224
  # The heads' bilinear resize to output_size and the 3×3 convolution after it: "folded" into one
  # linear map computed on the small grid (same numbers to float32 rounding, ~10× less work),
  # "separate", or "auto" (folded on a CPU, separate elsewhere until measured there).
  m.resize_conv = "auto"
  m.bn_eps = 1e-5
  m.bn_momentum = 0.1
  m.gn_eps = 1e-5

  return m


def _loss() -> ml_collections.ConfigDict:
  # The original's VSPLoss (docs/model.md §8) and Expert 2's deep supervision.
  loss = ml_collections.ConfigDict()
  loss.kl_weight = 10.0
  loss.cc_weight = 2.0
  loss.sim_weight = 1.0
  loss.bce_weight = 1.0
  loss.nss_weight = 0.0
  loss.fixation_alpha = 3.0  # BCE weight 1 + alpha·F on the (max-filtered) fixation map
  # Expert 2's auxiliary heads: L without BCE and without fixations, weighted per head.
  loss.aux_weights = ml_collections.ConfigDict({"p23": 0.10, "p17": 0.15, "p11": 0.20})

  return loss


def _train() -> ml_collections.ConfigDict:
  # Training (docs/model.md §9). One expert at a time, stage 1 (decoder) or stage 2 (+ LoRA).
  t = ml_collections.ConfigDict()
  t.stage = 1
  t.expert = 2
  t.batch_size = 4  # global
  # Micro-batches per step (lax.scan inside the step): the update is the whole batch's, in memory
  # for batch_size / grad_accum_steps clips (see train_step.accumulated_grads for BatchNorm).
  t.grad_accum_steps = 1
  t.seed = 0
  t.lr_decoder_stage1 = 1e-4
  t.lr_decoder_stage2 = 1e-5
  t.lr_lora = 1e-4
  t.weight_decay = 1e-4
  t.b1, t.b2, t.eps = 0.9, 0.999, 1e-8
  t.warmup_steps = 0  # linear warm-up from 1 % (Expert 2, stage 2: two epochs)
  t.cosine_steps = 0  # then cosine to min_lr over this many steps (0: constant)
  t.min_lr = 1e-6
  # Expert 2's deep supervision: the original's stage 1 only (trainnew.py); its stage 2
  # (trainnew2.py) trains on the main loss alone, unless `aux_loss_stage2`.
  t.aux_loss = True
  t.aux_loss_stage2 = False
  # The backbone's rematerialisation in stage 2, which differentiates through it ("": the
  # model's): "full" keeps one activation per block (6B: ~1.6 GB per clip of 20 frames instead of
  # ~28 GB); "auto" keeps what fits: on GPUs and TPUs the least recomputation whose activations
  # take under half the device's memory, on a CPU "none" when they fit in a quarter of the host's
  # memory, else "full" (`train_step.backbone_remat`). Stage 1 never rematerialises.
  t.remat_policy = "auto"
  t.num_steps = 1000
  t.checkpoint_every = 100
  t.keep = 2  # latest checkpoints kept (for resuming)
  t.best_k = 4  # best checkpoints kept by validation CC (WORKDIR/best; the EMA weights if any)
  # EMA of the trainable weights, used for validation and the best checkpoints. -1: the original's
  # recipe (0.99 for Expert 2 in stage 2, none otherwise); 0: none; else the decay.
  t.ema_decay = -1.0
  t.log_every = 10  # loss parts, learning rates, gradient norm: console and TensorBoard
  # A step with a non-finite loss or gradient changes nothing; the run stops there with one line
  # (its latest checkpoint the last good one), or with `skip_nonfinite` skips it and counts it.
  t.skip_nonfinite = False
  # (first, last): a jax.profiler trace of those steps in WORKDIR/profile; () none.
  t.profile_steps = ()
  # Where the weights start: a visage-convert output (backbone-only for stage 1, or with this
  # expert for stage 2), or a stage-1 workdir (its best checkpoint, over its own init's backbone).
  t.init = ""
  # The other expert, fixed, so that validation scores the fused map as the challenge does: a
  # workdir or a visage-convert output holding it. Empty: validation scores this expert's map.
  t.partner = ""
  # validation (when data.val_split is set) every N steps; -1: each epoch; 0: at the end only
  t.eval_every = -1
  # Validation's numbers, which also rank the best checkpoints by CC: "challenge", the NTIRE 2026
  # scorer's CC, SIM, NSS, AUC-Judd and KLD at model size, per video then over videos; "original",
  # trainnew.py's own CC, SIM (raw maps) and NSS (3×3 max-filtered fixations), frame-weighted.
  t.val_metrics = "challenge"
  # Peak FLOP/s of one device for the MFU estimate; 0: the nominal bf16 figure for known GPUs and
  # TPUs, a float32 matmul measured at start-up on a CPU.
  t.peak_flops = 0.0

  return t


def _data() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.dir = ""  # a visage-prepare output
  data.train_split = "train"
  data.val_split = ""  # e.g. "public_test" (challenge layout) or "validation" (DHF1K)
  data.workers = 0

  return data


def _mesh() -> ml_collections.ConfigDict:
  # The device mesh: data × fsdp × tensor; -1 takes the remaining devices.
  mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Parameter layout (visage_jax.runtime.parallel.ShardingRules): "PATH=AXES" rules separated by
  # ";", PATH a "/"-joined subsequence of a weight's path, AXES a mesh axis (or _) per trailing
  # dimension; the first match wins, unmatched weights are replicated. Megatron's split within a
  # block (column-parallel qkv/fc1, row-parallel proj/fc2), the other dimension over fsdp.
  mesh.rules = (
    "blocks/attn/qkv/kernel=fsdp,tensor; blocks/mlp/fc1/kernel=fsdp,tensor; "
    "blocks/attn/proj/kernel=tensor,fsdp; blocks/mlp/fc2/kernel=tensor,fsdp; "
    "backbone/pos_embed=_,_,fsdp"
  )
  # Weights (","-separated PATH patterns) that may stay whole where their rule's axis does not
  # divide a dimension; any other such weight is an error naming it.
  mesh.allow_replicated = ""
  return mesh


def expert_name(cfg) -> str:
  """The name of the expert `cfg.train` trains: "expert1" or "expert2"."""
  if cfg.train.expert not in (1, 2):
    raise ValueError(f"train.expert must be 1 or 2, got {cfg.train.expert}")
  return f"expert{cfg.train.expert}"


def model_mistake(m) -> str | None:
  """What makes `config.model` impossible to build, as "model.FIELD=VALUE: why", or None: sizes
  and counts below 1, a grid that the patches do not tile, taps beyond the depth. No JAX."""
  b = m.backbone
  for section, node, fields in (
    ("model.backbone", b, ("img_size", "patch_size", "tubelet_size", "num_frames")),
    ("model.backbone", b, ("pretrained_num_frames", "embed_dim", "depth", "num_heads")),
    ("model", m, ("neck_dim", "decoder_dim", "output_size")),
  ):
    for field in fields:
      if node[field] < 1:
        return f"{section}.{field}={node[field]}: must be at least 1"
  if b.img_size % b.patch_size:
    return f"model.backbone.img_size={b.img_size}: not a multiple of patch_size={b.patch_size}"
  if b.num_frames % b.tubelet_size:
    return f"model.backbone.num_frames={b.num_frames}: not a multiple of tubelet_size"
  if b.embed_dim % b.num_heads:
    return f"model.backbone.embed_dim={b.embed_dim}: not a multiple of num_heads={b.num_heads}"
  if not b.taps or max(b.taps) >= b.depth or min(b.taps) < 0:
    return f"model.backbone.taps={tuple(b.taps)}: each must lie in 0 … depth − 1 = {b.depth - 1}"
  if m.lora.enabled and m.lora.rank < 1:
    return f"model.lora.rank={m.lora.rank}: must be at least 1"
  return None
