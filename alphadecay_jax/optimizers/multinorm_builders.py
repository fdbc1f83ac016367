"""Builders for SinkGD and SWAN-style multi-normalisation (arXiv 2502.06742)."""

from __future__ import annotations

from typing import Any

import optax

from alphadecay_jax.optimizers.common import Builder, decay_mask
from alphadecay_jax.transforms import multinorm

MULTINORM_NAMES = ("sinkgd", "swan")


def multinorm_block(opt: Any, name: str) -> Any:
  """`optimizer.<name>` for sinkgd / swan, validated (errors name the key)."""
  block = opt[name]
  for key in ("num_iters", "ns_steps") if name == "swan" else ("num_iters",):
    if isinstance(block[key], bool) or not isinstance(block[key], int) or block[key] < 1:
      raise ValueError(f"optimizer.{name}.{key}={block[key]!r} must be an integer >= 1")
  for key in ("matrix_lr_scale", "adam_lr_scale", "eps"):
    if not block[key] > 0:
      raise ValueError(f"optimizer.{name}.{key}={block[key]!r} must be > 0")
  return block


def multinorm_builder(name: str) -> Builder:
  """Normalised updates for hidden matrices at lr_t * matrix_lr_scale; AdamW (with
  this config's b1, b2, eps, decay mask) for the rest at lr_t * adam_lr_scale."""
  def build(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    block = multinorm_block(opt, name)
    extra = dict(ns_steps=block.ns_steps) if name == "swan" else {}
    matrix_scale, adam_scale = block.matrix_lr_scale, block.adam_lr_scale
    return getattr(multinorm, name)(
        lambda t: schedule(t) * matrix_scale, num_iters=block.num_iters, eps=block.eps,
        adam_learning_rate=lambda t: schedule(t) * adam_scale,
        weight_decay=opt.weight_decay, b1=opt.b1, b2=opt.b2, adam_eps=opt.eps,
        adam_decay_mask=decay_mask(opt.decay_embeddings), **extra)
  return build
