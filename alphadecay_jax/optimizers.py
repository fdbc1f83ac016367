"""The one place that turns `config.optimizer` into an optax chain.

Every chain is: global-norm clipping -> the named optimizer (which applies the
learning-rate schedule). Each name maps to a builder in `BUILDERS`; a technique adds
its builder and, if it has settings, a sub-block of `default_optimizer_config()`.
  adamw    decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101), optax.adamw
           semantics: u = -lr_t * (adam(g) + wd * w).
  adam_l2  coupled L2 decay as in the AlphaDecay paper's main table (arXiv 2506.14562):
           g <- g + wd * w before the Adam moments.
  sinkgd   SinkGD (arXiv 2502.06742): stateless row/column l2 normalisation of hidden
           matrices, AdamW for the rest; `optimizer.sinkgd` (transforms/multinorm.py).
  swan     SWAN-style: row standardisation + Newton-Schulz whitening; `optimizer.swan`.
  lightsam LightSAM (arXiv 2505.24399): adaptive perturbation + adaptive descent,
           `optimizer.sam.variant` adagrad_norm | adagrad | adam (transforms/sam.py).
  sam/asam SAM (arXiv 2010.01412) / ASAM (arXiv 2102.11600) perturbation around the
           descent optimizer named by `optimizer.sam.base`.
  Any other name + `optimizer.sam.perturbation.kind` (lightsam | sam | asam) wraps that
  optimizer in the perturbation. With SAM, clipping applies to the gradient the descent
  consumes (the one at the perturbed point), as it does without SAM.
Decay touches only matrices: norms are spared, embeddings too unless
`optimizer.decay_embeddings` is set.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from alphadecay_jax.transforms import multinorm
from alphadecay_jax.transforms import sam as sam_lib

SCHEDULES = ("cosine", "constant")
SAM_NAMES = ("lightsam", "sam", "asam")
PERTURBATIONS = ("none", "lightsam", "sam", "asam")


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
      # Hidden matrices step at lr_t * matrix_lr_scale, the rest (AdamW) at
      # lr_t * adam_lr_scale; eps floors norms relative to the matrix RMS.
      sinkgd=dict(num_iters=5, matrix_lr_scale=1.0, adam_lr_scale=1.0, eps=1e-8),
      swan=dict(num_iters=1, ns_steps=5, matrix_lr_scale=1.0, adam_lr_scale=1.0,
                eps=1e-8),
      sam=dict(
          rho=0.05,                # radius for name=lightsam|sam|asam
          variant="adagrad_norm",  # LightSAM accumulators: adagrad_norm|adagrad|adam
          base="adamw",            # descent optimizer for name=sam|asam
          asam_eta=0.01,           # ASAM's T = |w| + asam_eta
          # Wraps any other optimizer name: kind none|lightsam|sam|asam.
          perturbation=dict(kind="none", rho=0.05, variant="adagrad_norm"),
      ),
  ))


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
  if opt.name in MULTINORM_NAMES:
    _multinorm_block(opt, opt.name)
  _validate_sam(opt)


def _validate_sam(opt: Any) -> None:
  sam, pert = opt.sam, opt.sam.perturbation
  for key, value in (("sam.rho", sam.rho), ("sam.perturbation.rho", pert.rho),
                     ("sam.asam_eta", sam.asam_eta)):
    if not value >= 0:
      raise ValueError(f"optimizer.{key}={value!r} must be >= 0")
  for key, value in (("sam.variant", sam.variant), ("sam.perturbation.variant", pert.variant)):
    if value not in sam_lib.VARIANTS:
      raise ValueError(f"optimizer.{key}={value!r} is not one of {sam_lib.VARIANTS}")
  bases = tuple(n for n in BUILDERS if n not in SAM_NAMES)
  if opt.name in ("sam", "asam") and sam.base not in bases:
    raise ValueError(f"optimizer.sam.base={sam.base!r} is not one of {bases}")
  if pert.kind not in PERTURBATIONS:
    raise ValueError(f"optimizer.sam.perturbation.kind={pert.kind!r} is not one of "
                     f"{PERTURBATIONS}")
  if pert.kind != "none" and opt.name in SAM_NAMES:
    raise ValueError(f"optimizer.sam.perturbation.kind={pert.kind!r} needs a non-SAM "
                     f"optimizer.name, not {opt.name!r} (allowed: {bases})")


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


Builder = Callable[[Any, optax.Schedule], optax.GradientTransformation]


def _adamw(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(
      optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_learning_rate(schedule))


def _adam_l2(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
      optax.scale_by_learning_rate(schedule))


MULTINORM_NAMES = ("sinkgd", "swan")


def _multinorm_block(opt: Any, name: str) -> Any:
  """`optimizer.<name>` for sinkgd / swan, validated (errors name the key)."""
  block = opt[name]
  for key in ("num_iters", "ns_steps") if name == "swan" else ("num_iters",):
    if isinstance(block[key], bool) or not isinstance(block[key], int) or block[key] < 1:
      raise ValueError(f"optimizer.{name}.{key}={block[key]!r} must be an integer >= 1")
  for key in ("matrix_lr_scale", "adam_lr_scale", "eps"):
    if not block[key] > 0:
      raise ValueError(f"optimizer.{name}.{key}={block[key]!r} must be > 0")
  return block


def _multinorm(name: str) -> Builder:
  """Normalised updates for hidden matrices at lr_t * matrix_lr_scale; AdamW (with
  this config's b1, b2, eps, decay mask) for the rest at lr_t * adam_lr_scale."""
  def build(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    block = _multinorm_block(opt, name)
    extra = dict(ns_steps=block.ns_steps) if name == "swan" else {}
    matrix_scale, adam_scale = block.matrix_lr_scale, block.adam_lr_scale
    return getattr(multinorm, name)(
        lambda t: schedule(t) * matrix_scale, num_iters=block.num_iters, eps=block.eps,
        adam_learning_rate=lambda t: schedule(t) * adam_scale,
        weight_decay=opt.weight_decay, b1=opt.b1, b2=opt.b2, adam_eps=opt.eps,
        adam_decay_mask=decay_mask(opt.decay_embeddings), **extra)
  return build


def _clipped(opt: Any, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  if not opt.grad_clip_norm:
    return tx
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)


def _perturbation(kind: str, rho: float, variant: str, opt: Any
                  ) -> optax.GradientTransformation:
  if kind == "lightsam":
    return sam_lib.adaptive_perturbation(rho, variant, b2=opt.b2, eps=opt.eps)
  if kind == "sam":
    return sam_lib.sam(rho)
  return sam_lib.asam(rho, eta=opt.sam.asam_eta)


# The SAM builders clip inside (the descent gradient); build_optimizer adds no clipping.
def _lightsam(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  descent = sam_lib.adaptive_descent(schedule, opt.sam.variant, opt.b1, opt.b2, opt.eps)
  return sam_lib.sam_wrap(_clipped(opt, descent),
                          _perturbation("lightsam", opt.sam.rho, opt.sam.variant, opt))


def _sam_around_base(kind: str) -> Builder:
  def build(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    base = _clipped(opt, BUILDERS[opt.sam.base](opt, schedule))
    return sam_lib.sam_wrap(base, _perturbation(kind, opt.sam.rho, opt.sam.variant, opt))
  return build


BUILDERS: dict[str, Builder] = {
    "adamw": _adamw,
    "adam_l2": _adam_l2,
    "sinkgd": _multinorm("sinkgd"),
    "swan": _multinorm("swan"),
    "lightsam": _lightsam,
    "sam": _sam_around_base("sam"),
    "asam": _sam_around_base("asam"),
}


def build_optimizer(opt: Any, total_steps: int) -> optax.GradientTransformation:
  """Config -> optax chain (validated first): clipping, then the named optimizer."""
  validate_optimizer_config(opt, total_steps)
  tx = BUILDERS[opt.name](opt, make_schedule(opt, total_steps))
  if opt.name in SAM_NAMES:
    return tx
  tx = _clipped(opt, tx)
  pert = opt.sam.perturbation
  if pert.kind != "none":
    tx = sam_lib.sam_wrap(tx, _perturbation(pert.kind, pert.rho, pert.variant, opt))
  return tx


def state_metrics(opt_state: Any) -> dict[str, Any]:
  """Metrics that transforms expose from their state, for logging.

  Any state node with a `log_metrics()` method (e.g. a NamedTuple state of one of our
  transforms) contributes its dict; found anywhere in the (chained, masked...) state.
  """
  out: dict[str, Any] = {}
  has = lambda x: callable(getattr(x, "log_metrics", None))
  for node in jax.tree.leaves(opt_state, is_leaf=has):
    if has(node):
      out.update(node.log_metrics())
  return out


def state_bytes(opt_state: Any) -> int:
  """Bytes held by an optimizer state (works on abstract ShapeDtypeStructs too)."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state)
                 if hasattr(x, "dtype")))
