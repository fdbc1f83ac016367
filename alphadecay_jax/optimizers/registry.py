"""Optimizer names -> builders, config validation, and the chain the trainer uses."""

from __future__ import annotations

from typing import Any

import optax

from alphadecay_jax.optimizers import decay_builders as decay
from alphadecay_jax.optimizers import lipschitz_builders as lipschitz
from alphadecay_jax.optimizers import multinorm_builders as multinorm
from alphadecay_jax.optimizers import sam_builders as sam
from alphadecay_jax.optimizers.common import SCHEDULES, Builder, clipped, make_schedule

BUILDERS: dict[str, Builder] = {
    "muon": lipschitz.muon,
    "adamw": decay.adamw,
    "adam_l2": decay.adam_l2,
    "alphadecay_adamw": decay.alpha_decay_adam(coupled=False),
    "alphadecay_adam_l2": decay.alpha_decay_adam(coupled=True),
    "awd": decay.awd,
    "adadecay": decay.adadecay,
    "sinkgd": multinorm.multinorm_builder("sinkgd"),
    "swan": multinorm.multinorm_builder("swan"),
    "lightsam": sam.lightsam,
}
BUILDERS["sam"] = sam.sam_around_base("sam", BUILDERS)
BUILDERS["asam"] = sam.sam_around_base("asam", BUILDERS)


def validate_optimizer_config(opt: Any, total_steps: int) -> None:
  """Raises ValueError naming the key, value and what is allowed."""
  if opt.name not in BUILDERS:
    raise ValueError(f"optimizer.name={opt.name!r} is not one of {tuple(BUILDERS)}")
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={opt.schedule!r} is not one of {SCHEDULES}")
  if not opt.learning_rate > 0:
    raise ValueError(f"optimizer.learning_rate={opt.learning_rate!r} must be > 0")
  if not 0 <= opt.warmup_steps <= total_steps:
    raise ValueError(f"optimizer.warmup_steps={opt.warmup_steps} must be in "
                     f"[0, steps={total_steps}]")
  if not 0 <= opt.min_lr_ratio <= 1:
    raise ValueError(f"optimizer.min_lr_ratio={opt.min_lr_ratio} must be in [0, 1]")
  if opt.weight_decay < 0:
    raise ValueError(f"optimizer.weight_decay={opt.weight_decay} must be >= 0")
  if opt.grad_clip_norm < 0:
    raise ValueError(f"optimizer.grad_clip_norm={opt.grad_clip_norm} must be >= 0 "
                     "(0 disables clipping)")
  if opt.name in multinorm.MULTINORM_NAMES:
    multinorm.multinorm_block(opt, opt.name)
  decay.validate_decay_blocks(opt)
  sam.validate_sam(opt, tuple(BUILDERS))
  lipschitz.validate_muon_lipschitz(opt)


def build_optimizer(opt: Any, total_steps: int) -> optax.GradientTransformation:
  """Config -> optax chain (validated first): clipping, then the named optimizer."""
  validate_optimizer_config(opt, total_steps)
  tx = BUILDERS[opt.name](opt, make_schedule(opt, total_steps))
  if opt.name in sam.SAM_NAMES:
    return lipschitz.constrained(opt, tx, total_steps)
  tx = sam.with_perturbation(opt, clipped(opt, tx))
  return lipschitz.constrained(opt, tx, total_steps)
