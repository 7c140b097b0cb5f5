"""Their names → ours: one table of rules from our parameter paths to the original's tensor names.

Each of our parameters is a slot filled from one source file: the backbone file (base weights of
the encoder) or an expert file (that expert's LoRA, neck and decoder). Source names are compared
in a canonical form: without `vision_encoder.`, peft's `base_model.model.`, the feature-tap
wrapper's `.block.` and the adapter name `.default`.
"""

from __future__ import annotations

import dataclasses
import re

# (pattern, replacement) applied in order to our dotted path, after the leading module name.
_EXPERT_RULES = [
  (r"^neck\.dim_reducers\.", "dim_reducers."),
  # Expert 1
  (r"^decoder\.(upsample5|upsample11)\.", r"decoder.\1.proj."),
  (r"\.shortcut_conv\.", ".shortcut.0."),
  (r"\.shortcut_(bn|norm)\.", ".shortcut.1."),
  (r"^decoder\.final_head\.conv1\.", "decoder.final_head.0."),
  (r"^decoder\.final_head\.bn\.", "decoder.final_head.1."),
  (r"^decoder\.final_head\.conv2\.", "decoder.final_head.3."),
  # Expert 2
  (r"^decoder\.(proj5|proj11|proj17|proj23)\.conv\.", r"decoder.\1.block.0."),
  (r"^decoder\.(proj5|proj11|proj17|proj23)\.norm\.", r"decoder.\1.block.1."),
  (r"^decoder\.aux_(p23|p17|p11)\.", r"decoder.aux_heads.\1."),
  (r"^(decoder\.(?:main_head|aux_heads\.p\d+))\.pre_conv\.", r"\1.pre_2d.0."),
  (r"^(decoder\.(?:main_head|aux_heads\.p\d+))\.pre_norm\.", r"\1.pre_2d.1."),
  (r"^(decoder\.(?:main_head|aux_heads\.p\d+))\.conv1\.", r"\1.head_2d.0."),
  (r"^(decoder\.(?:main_head|aux_heads\.p\d+))\.norm1\.", r"\1.head_2d.1."),
  (r"^(decoder\.(?:main_head|aux_heads\.p\d+))\.conv2\.", r"\1.head_2d.3."),
]

_LEAF = {"kernel": "weight", "lora_a": "lora_A.weight", "lora_b": "lora_B.weight"}


@dataclasses.dataclass(frozen=True)
class Slot:
  """One source tensor's place in our tree: `path`, indexed by `index` along stacked axes."""

  path: tuple  # our parameter path
  index: tuple  # indices into the leading stacked axes (block, expert)
  source: str  # "backbone" or an expert name
  name: str  # canonical source name
  kind: str  # "base", "lora_a", "lora_b", "pos_embed", "plain"


def _leaf(name: str) -> str:
  head, _, leaf = name.rpartition(".")
  return f"{head}.{_LEAF.get(leaf, leaf)}" if head else _LEAF.get(leaf, leaf)


def _kind(leaf: str) -> str:
  return {"lora_a": "lora_a", "lora_b": "lora_b", "pos_embed": "pos_embed"}.get(leaf, "plain")


def slots_for(abstract_flat: dict, expert_names: tuple, depth: int) -> list[Slot]:
  """Every slot of the model whose abstract flat state is `abstract_flat` (path → shape struct)."""
  slots = []
  for path in abstract_flat:
    top, rest = path[0], tuple(str(p) for p in path[1:])
    leaf = rest[-1]
    if top == "backbone":
      if rest[0] == "blocks":
        body = _leaf(".".join(rest[1:]))
        for i in range(depth):
          if leaf in ("lora_a", "lora_b"):
            for e, expert in enumerate(expert_names):
              slots.append(Slot(path, (i, e), expert, f"blocks.{i}.{body}", _kind(leaf)))
          else:
            slots.append(Slot(path, (i,), "backbone", f"blocks.{i}.{body}", "plain"))
      elif rest[0] == "patch_embed":
        name = "patch_embed.proj." + _LEAF.get(leaf, leaf)
        if leaf in ("lora_a", "lora_b"):
          for e, expert in enumerate(expert_names):
            slots.append(Slot(path, (e,), expert, name, _kind(leaf)))
        else:
          slots.append(Slot(path, (), "backbone", name, "plain"))
      else:
        slots.append(Slot(path, (), "backbone", ".".join(rest), _kind(leaf)))
    elif top in expert_names:
      name = ".".join(rest)
      for pattern, repl in _EXPERT_RULES:
        name = re.sub(pattern, repl, name)
      slots.append(Slot(path, (), top, _leaf(name), "plain"))
    else:
      raise ValueError(f"no conversion rule for parameter {'.'.join(map(str, path))}")
  return slots


_BLOCK_WRAPPER = re.compile(r"^blocks\.(\d+)\.block\.")


def canonical_expert_key(key: str) -> str:
  """An expert file's name in canonical form (see the module docstring)."""
  for prefix in ("encoder.vision_encoder.", "vision_encoder."):
    if key.startswith(prefix):
      key = key[len(prefix) :]
      break
  if key.startswith("base_model.model."):
    key = key[len("base_model.model.") :]
  key = _BLOCK_WRAPPER.sub(r"blocks.\1.", key)
  return key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def expert_display_name(name: str) -> str:
  """The canonical name as the original's stage-2 expert file spells it."""
  if ".lora_" in name:
    name = re.sub(r"^blocks\.(\d+)\.", r"blocks.\1.block.", name)
    name = name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
    return "encoder.vision_encoder.base_model.model." + name
  return name


def classify_ignored(name: str) -> str:
  """Why a source tensor that no slot wants is ignored (for the conversion report)."""
  if name.endswith("num_batches_tracked"):
    return "BatchNorm batch counters (not used)"
  if name.endswith(("center_bias.xx", "center_bias.yy")):
    return "centre-bias grids (derived, rebuilt by the model)"
  if re.search(r"(^|\.)(clip_projector|clip_decoder|final_clip_decoder|clip_pos_embed)", name):
    return "CLIP distillation heads (unused by ViSAGE)"
  if re.search(r"mlp\.fc[12]\.lora_", name):
    return "fc1/fc2 LoRA (bypassed by the fused MLP)"
  if re.match(r"^blocks\.(\d+)\.", name):
    return "blocks beyond model.backbone.depth"
  return "not part of the vision model"
