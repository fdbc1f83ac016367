"""Pieces every optimizer builder shares: the schedule, the decay mask, clipping."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from alphadecay_jax import labels

SCHEDULES = ("cosine", "constant")
# config.optimizer, the learning-rate schedule -> the optimizer's chain (before clipping).
Builder = Callable[[Any, optax.Schedule], optax.GradientTransformation]


def make_schedule(opt: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup to the peak, then cosine to `min_lr_ratio * peak` (or constant)."""
  peak, warmup = opt.learning_rate, int(opt.warmup_steps)
  if opt.schedule == "constant":
    return optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * opt.min_lr_ratio)


def decay_mask(decay_embeddings: bool) -> Callable[[Any], Any]:
  """Mask fn: True for weight matrices; False for norm scales (stacked [layers, d] ones
  included), non-matrices and, unless asked, the embedding. Roles come from `labels`."""
  def mask(params: Any) -> Any:
    def leaf(path: tuple, x: Any) -> bool:
      role = labels.role_of(path)
      return (labels.default_view(x) is not None and role != "norm"
              and (decay_embeddings or role != "embed"))
    return jax.tree_util.tree_map_with_path(leaf, params)
  return mask


def clipped(opt: Any, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Global-norm clipping at `optimizer.grad_clip_norm` before `tx` (0: no clipping)."""
  if not opt.grad_clip_norm:
    return tx
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
