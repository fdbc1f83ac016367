"""Builders for Adam with uniform, AlphaDecay (arXiv 2506.14562), AWD (arXiv 2210.00094)
and AdaDecay (arXiv 1907.08931) weight decay."""

from __future__ import annotations

from typing import Any

import optax

from alphadecay_jax import labels
from alphadecay_jax import spectral
from alphadecay_jax.optimizers.common import Builder, decay_mask
from alphadecay_jax.transforms import alpha_decay
from alphadecay_jax.transforms import decay_baselines


def validate_decay_blocks(opt: Any) -> None:
  """`optimizer.alpha_decay` and `optimizer.adadecay`."""
  ad, ada = opt.alpha_decay, opt.adadecay
  if not 0 <= ad.s_min <= ad.s_max:
    raise ValueError(f"optimizer.alpha_decay.s_min={ad.s_min}, s_max={ad.s_max}: need "
                     "0 <= s_min <= s_max")
  for key, value in (("alpha_decay.refresh_every", ad.refresh_every),
                     ("adadecay.refresh_every", ada.refresh_every)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"optimizer.{key}={value!r} must be an integer >= 1")
  if ad.xmin not in spectral.XMIN_MODES:
    raise ValueError(f"optimizer.alpha_decay.xmin={ad.xmin!r} is not one of "
                     f"{spectral.XMIN_MODES}")
  if ada.granularity not in ("module", "parameter"):
    raise ValueError(f"optimizer.adadecay.granularity={ada.granularity!r} is not one of "
                     "('module', 'parameter')")


def adamw(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """u = -lr_t * (adam(g) + wd * w): decoupled decay (arXiv 1711.05101)."""
  return optax.chain(
      optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_learning_rate(schedule))


def adam_l2(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """u = -lr_t * adam(g + wd * w): coupled L2, the AlphaDecay paper's main setting."""
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
      optax.scale_by_learning_rate(schedule))


def alpha_decay_adam(coupled: bool) -> Builder:
  """AlphaDecay around Adam: decay before the moments (L2) or after them (AdamW)."""
  def build(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    block = opt.alpha_decay
    tuned = lambda params: labels.tuned_module_mask(
        params, exclude_first_layer_q=block.exclude_first_layer_q)
    decay = alpha_decay.add_alpha_decayed_weights(
        opt.weight_decay, s_range=(block.s_min, block.s_max),
        refresh_every=block.refresh_every, xmin=block.xmin,
        mask=decay_mask(opt.decay_embeddings), tuned_mask=tuned)
    adam = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
    parts = (decay, adam) if coupled else (adam, decay)
    return optax.chain(*parts, optax.scale_by_learning_rate(schedule))
  return build


def awd(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam with AWD's gradient-norm-balanced decay (arXiv 2210.00094)."""
  return optax.chain(
      decay_baselines.awd(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
                          opt.weight_decay, coupled=opt.awd.coupled,
                          mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_learning_rate(schedule))


def adadecay(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam with AdaDecay's gradient-norm-scaled decay (arXiv 1907.08931)."""
  block = opt.adadecay
  return optax.chain(
      decay_baselines.adadecay(
          optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps), opt.weight_decay,
          alpha=block.alpha, granularity=block.granularity,
          refresh_every=block.refresh_every, coupled=block.coupled,
          mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_learning_rate(schedule))
