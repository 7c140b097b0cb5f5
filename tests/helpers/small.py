"""The small training config of the step tests, and one step of it (no side effects on import)."""

from configs.visage import get_config


def small_config(expert, stage):
  """`tiny` at 56×56, 4 frames, 4 blocks (all tapped)."""
  cfg = get_config("tiny")
  b = cfg.model.backbone
  b.img_size, b.num_frames, b.depth, b.taps = 56, 4, 4, (0, 1, 2, 3)
  cfg.model.output_size = 56
  cfg.train.expert, cfg.train.stage = expert, stage
  return cfg


def one_step(cfg, mesh, batch):
  """One step of a fresh model (seed 1) jitted on `mesh` with its gradients, key 3:
  (state, metrics) on the host. In stage 2 every trainable weight moves by 0.01 first: LoRA B
  starts at zero, and its gradient path should carry real values."""
  import jax

  from visage_jax.runtime import parallel
  from visage_jax.training import step as train_step

  model = train_step.init_model(cfg, seed=1)
  graphdef, trainable, stats, frozen = train_step.split(model, cfg)
  if cfg.train.stage == 2:
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
  tx = train_step.make_optimizer(cfg)
  state = train_step.new_state(cfg, tx, trainable, stats)
  step, shardings = train_step.jit_step(graphdef, cfg, tx, mesh, state, frozen, return_grads=True)
  state, frozen = parallel.put((state, frozen), shardings)
  return jax.device_get(step(state, frozen, batch, jax.random.key(3)))
