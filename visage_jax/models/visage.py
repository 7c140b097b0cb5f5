"""ViSAGE: one InternVideo2 backbone shared by the experts, each expert with its own LoRA, neck and
decoder, and their maps fused in logit space. One call runs every expert in one program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from visage_jax.models.experts import EXPERTS
from visage_jax.models.internvideo2 import InternVideo2


def logit_fusion(maps, alpha: float, eps: float = 1e-6):
  """sigmoid(α·logit(p₁) + (1−α)·logit(p₂)) with each map clipped to [eps, 1−eps]."""
  p1, p2 = (jnp.clip(m.astype(jnp.float32), eps, 1 - eps) for m in maps)
  z = alpha * (jnp.log(p1) - jnp.log1p(-p1)) + (1 - alpha) * (jnp.log(p2) - jnp.log1p(-p2))
  return jax.nn.sigmoid(z)


class ViSAGE(nnx.Module):
  def __init__(self, cfg, *, rngs: nnx.Rngs):
    """cfg: the `model` section of the config."""
    self.expert_names = tuple(cfg.experts)
    unknown = [n for n in self.expert_names if n not in EXPERTS]
    if unknown:
      raise ValueError(f"model.experts: unknown {unknown}; known {sorted(EXPERTS)}")
    num = max(len(self.expert_names), 1)
    self.backbone = InternVideo2(cfg, num_experts=num, with_lora=bool(self.expert_names), rngs=rngs)
    for name in self.expert_names:
      setattr(self, name, EXPERTS[name](cfg, rngs=rngs))
    self.fusion_alpha = float(cfg.fusion_alpha)
    self.fusion_eps = float(cfg.fusion_eps)

  def __call__(self, clip, *, with_aux: bool = False, return_features: bool = False, rng=None):
    """clip: (B, T, H, W, 3) normalised frames.

    Returns a dict of float32 (B, T, S, S) probabilities: one map per expert under its name and
    `fused`; with `with_aux`, Expert 2's auxiliary maps as `expert2_aux_p23` etc.; with
    `return_features`, `taps` (E lists of (B, T', H', W', D)) and `cls` (E, B, D).
    """
    if not self.expert_names:
      raise ValueError("this model has no experts (a backbone-only checkpoint); nothing to predict")
    taps, cls = self.backbone(clip, rng=rng)
    out = {}
    extras = {}
    for e, name in enumerate(self.expert_names):
      res = getattr(self, name)([t[e] for t in taps], cls[e], with_aux=with_aux)
      out[name] = res.pop("map")
      for k, v in res.items():
        extras[f"{name}_{k}"] = v
    maps = [out[n] for n in self.expert_names]
    if len(maps) == 1:
      out["fused"] = maps[0]
    elif len(maps) == 2:
      out["fused"] = logit_fusion(maps, self.fusion_alpha, self.fusion_eps)
    else:
      raise ValueError(f"logit fusion takes two experts, the model has {len(maps)}")
    out.update(extras)
    if return_features:
      out["taps"] = taps
      out["cls"] = cls
    return out


def merge_lora(model_cfg, model: ViSAGE):
  """(config, model) with each expert's LoRA folded into its own copy of the backbone kernels.

  For inference: the merged model runs the same numbers without the low-rank branch, at the cost
  of one backbone copy per expert.
  """
  import numpy as np

  from visage_jax.models.lora import fold_lora

  if model_cfg.lora_merged or not model_cfg.lora.enabled or not model_cfg.experts:
    raise ValueError("nothing to merge: the model has no unmerged LoRA")
  state = nnx.state(model)
  flat = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}
  merged = fold_lora(flat, float(model_cfg.lora.alpha) / float(model_cfg.lora.rank))
  new_cfg = model_cfg.copy_and_resolve_references()
  new_cfg.lora_merged = True
  new_model = nnx.eval_shape(lambda: ViSAGE(new_cfg, rngs=nnx.Rngs(0)))
  graphdef, new_state = nnx.split(new_model)
  for path, var in nnx.to_flat_state(new_state):
    var.set_value(jnp.asarray(merged[tuple(path)]))
  return new_cfg, nnx.merge(graphdef, new_state)
