"""The one place that turns `config.optimizer` into an optax chain.

Every chain is: global-norm clipping -> the named optimizer -> learning-rate schedule.
Names so far:
  adamw    decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101), optax.adamw
           semantics: u = -lr_t * (adam(g) + wd * w).
  adam_l2  coupled L2 decay as in the AlphaDecay paper's main table (arXiv 2506.14562):
           g <- g + wd * w before the Adam moments.
Both decay only matrices: norms are spared, embeddings too unless
`optimizer.decay_embeddings` is set.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

OPTIMIZERS = ("adamw", "adam_l2")
SCHEDULES = ("cosine", "constant")


def default_optimizer_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=1e-3,
      schedule="cosine",
      warmup_steps=100,
      min_lr_ratio=0.1,        # cosine floor, as a fraction of the peak
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      decay_embeddings=False,
      grad_clip_norm=1.0,      # 0 disables clipping
  ))


def validate_optimizer_config(opt: Any, total_steps: int) -> None:
  """Raises ValueError naming the key, value and what is allowed."""
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name={opt.name!r} is not one of {OPTIMIZERS}")
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


def make_schedule(opt: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup to the peak, then cosine to `min_lr_ratio * peak` (or constant)."""
  peak, warmup = opt.learning_rate, int(opt.warmup_steps)
  if opt.schedule == "constant":
    return optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * opt.min_lr_ratio)


def decay_mask(decay_embeddings: bool) -> Callable[[Any], Any]:
  """Mask fn: True for matrices (ndim >= 2), False for norms and, unless asked, the embedding."""
  def mask(params: Any) -> Any:
    def leaf(path: tuple, x: Any) -> bool:
      keys = [getattr(k, "key", None) for k in path]
      return x.ndim >= 2 and (decay_embeddings or keys[-1:] != ["embed"])
    return jax.tree_util.tree_map_with_path(leaf, params)
  return mask


def build_optimizer(opt: Any, total_steps: int) -> optax.GradientTransformation:
  """Config -> optax chain (validated first)."""
  validate_optimizer_config(opt, total_steps)
  schedule = make_schedule(opt, total_steps)
  mask = decay_mask(opt.decay_embeddings)
  adam = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
  decay = optax.add_decayed_weights(opt.weight_decay, mask=mask)
  parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if opt.name == "adamw":
    parts += [adam, decay]
  elif opt.name == "adam_l2":
    parts += [decay, adam]
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
