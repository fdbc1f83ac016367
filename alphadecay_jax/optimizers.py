"""The one place that turns `config.optimizer` into an optax chain.

Every chain is: global-norm clipping -> the named optimizer (which applies the
learning-rate schedule). Each name maps to a builder in `BUILDERS`; a technique adds
its builder and, if it has settings, a sub-block of `default_optimizer_config()`.
  adamw    decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101), optax.adamw
           semantics: u = -lr_t * (adam(g) + wd * w).
  adam_l2  coupled L2 decay as in the AlphaDecay paper's main table (arXiv 2506.14562):
           g <- g + wd * w before the Adam moments.
  alphadecay_adamw / alphadecay_adam_l2   AlphaDecay (arXiv 2506.14562): per-module
           decay from each matrix's ESD alpha, decoupled / coupled
           (`optimizer.alpha_decay`, transforms/alpha_decay.py).
  awd / adadecay   the paper's baselines, arXiv 2210.00094 / 1907.08931
           (`optimizer.awd`, `optimizer.adadecay`; transforms/decay_baselines.py);
           `weight_decay` is AWD's lambda_awd and AdaDecay's base decay.
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
  muon     optax.contrib.muon on hidden matrices at lr_t * matrix_lr_scale, AdamW (no
           decay) on embeddings, head and norms at lr_t * adam_lr_scale; `optimizer.muon`.
  Any name + `optimizer.lipschitz.projection` (arXiv 2507.13338, transforms/lipschitz.py):
  updates become P(params + u) - params, P capping hidden matrices' RMS->RMS norms at
  w_max, the head's at head_w_max (`head_projection`) and token vectors' RMS at
  embed_max_rms. soft_cap needs name=muon (its coupling uses Muon's update-norm bound).
Decay touches only matrices: norms are spared, embeddings too unless
`optimizer.decay_embeddings` is set.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from alphadecay_jax import labels
from alphadecay_jax import spectral
from alphadecay_jax.transforms import alpha_decay
from alphadecay_jax.transforms import decay_baselines
from alphadecay_jax.transforms import lipschitz as lipschitz_lib
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
      # Decay multipliers s in [s_min, s_max] mapped from alpha; refreshed every N steps.
      alpha_decay=dict(s_min=0.6666, s_max=5.0, refresh_every=500, xmin="median",
                       exclude_first_layer_q=True),
      awd=dict(coupled=True),
      adadecay=dict(alpha=4.0, granularity="module", refresh_every=500, coupled=True),
      # Hidden matrices step at lr_t * matrix_lr_scale, the rest (AdamW) at
      # lr_t * adam_lr_scale; eps floors norms relative to the matrix RMS.
      sinkgd=dict(num_iters=5, matrix_lr_scale=1.0, adam_lr_scale=1.0, eps=1e-8),
      swan=dict(num_iters=1, ns_steps=5, matrix_lr_scale=1.0, adam_lr_scale=1.0,
                eps=1e-8),
      muon=dict(ns_coeffs="dion", beta=0.95, nesterov=True, matrix_lr_scale=1.0,
                adam_lr_scale=1.0),
      # Projections after each step (none|normalize|hammer|spectral_decay|soft_cap|
      # hard_cap|exact_cap); caps in RMS->RMS units; 0 disables head / embedding caps.
      lipschitz=dict(projection="none", w_max=1.0, head_projection="exact_cap",
                     head_w_max=0.0, embed_max_rms=0.0, spectral_decay=0.0,
                     power_iters=16),
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
  _validate_decay_blocks(opt)
  _validate_sam(opt)
  _validate_muon_lipschitz(opt)


MUON_NS_PRESETS = {"standard": "keller", "dion": "dion", "six_step": "six_step"}
PROJECTIONS = ("none", "normalize", "hammer", "spectral_decay", "soft_cap", "hard_cap",
               "exact_cap")
HEAD_PROJECTIONS = ("normalize", "hard_cap", "exact_cap")


def _validate_muon_lipschitz(opt: Any) -> None:
  mu, lip = opt.muon, opt.lipschitz
  if mu.ns_coeffs not in MUON_NS_PRESETS:
    raise ValueError(f"optimizer.muon.ns_coeffs={mu.ns_coeffs!r} is not one of "
                     f"{tuple(MUON_NS_PRESETS)}")
  for key, value in (("muon.matrix_lr_scale", mu.matrix_lr_scale),
                     ("muon.adam_lr_scale", mu.adam_lr_scale), ("lipschitz.w_max", lip.w_max)):
    if not value > 0:
      raise ValueError(f"optimizer.{key}={value!r} must be > 0")
  if not 0 <= mu.beta < 1:
    raise ValueError(f"optimizer.muon.beta={mu.beta!r} must be in [0, 1)")
  for key, value, allowed in (("projection", lip.projection, PROJECTIONS),
                              ("head_projection", lip.head_projection, HEAD_PROJECTIONS)):
    if value not in allowed:
      raise ValueError(f"optimizer.lipschitz.{key}={value!r} is not one of {allowed}")
  for key in ("head_w_max", "embed_max_rms"):
    if not lip[key] >= 0:
      raise ValueError(f"optimizer.lipschitz.{key}={lip[key]!r} must be >= 0 (0: off)")
  if not 0 <= lip.spectral_decay < 1:
    raise ValueError(f"optimizer.lipschitz.spectral_decay={lip.spectral_decay!r} must be "
                     "in [0, 1)")
  if isinstance(lip.power_iters, bool) or not isinstance(lip.power_iters, int) or (
      lip.power_iters < 1):
    raise ValueError(f"optimizer.lipschitz.power_iters={lip.power_iters!r} must be an "
                     "integer >= 1")
  if lip.projection == "soft_cap":
    if opt.name != "muon":
      raise ValueError(f"optimizer.lipschitz.projection='soft_cap' needs optimizer.name="
                       f"'muon' (a bounded update norm), not {opt.name!r}; use hard_cap, "
                       "exact_cap or normalize with other optimizers")
    # Square matrices; optax's width scaling makes eta sqrt(fan_in/fan_out) larger for
    # fan_in > fan_out (mlp_down), which the projection accounts for exactly.
    eta = opt.learning_rate * mu.matrix_lr_scale * spectral.polynomial_sup(
        spectral.NS_COEFFS[MUON_NS_PRESETS[mu.ns_coeffs]])
    if eta > (spectral.SOFT_CAP_MAX_RATIO - 1) * lip.w_max:
      raise ValueError(
          f"optimizer.learning_rate={opt.learning_rate} x muon.matrix_lr_scale gives a Muon "
          f"update norm {eta:.4f} > 0.3065 * lipschitz.w_max={lip.w_max}: the soft cap "
          "cannot guarantee the cap; lower the rate or raise w_max")


def _validate_decay_blocks(opt: Any) -> None:
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
  """Mask fn: True for weight matrices; False for norm scales (stacked [layers, d] ones
  included), non-matrices and, unless asked, the embedding. Roles come from `labels`."""
  def mask(params: Any) -> Any:
    def leaf(path: tuple, x: Any) -> bool:
      role = labels.role_of(path)
      return (labels.default_view(x) is not None and role != "norm"
              and (decay_embeddings or role != "embed"))
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


def _alpha_decay(coupled: bool) -> Builder:
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


def _awd(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(
      decay_baselines.awd(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
                          opt.weight_decay, coupled=opt.awd.coupled,
                          mask=decay_mask(opt.decay_embeddings)),
      optax.scale_by_learning_rate(schedule))


def _adadecay(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  block = opt.adadecay
  return optax.chain(
      decay_baselines.adadecay(
          optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps), opt.weight_decay,
          alpha=block.alpha, granularity=block.granularity,
          refresh_every=block.refresh_every, coupled=block.coupled,
          mask=decay_mask(opt.decay_embeddings)),
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


def _muon(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """optax.contrib.muon: Muon for attention / MLP matrices (stacked leading axes are
  batch axes), AdamW without decay for everything else."""
  block = opt.muon

  def dim_numbers(params: Any) -> Any:
    mask = labels.hidden_matrix_mask(params)
    return jax.tree.map(lambda x, m: optax.contrib.MuonDimensionNumbers(
        x.ndim - 2, x.ndim - 1) if m else None, params, mask)

  return optax.contrib.muon(
      lambda t: schedule(t) * block.matrix_lr_scale,
      ns_coeffs=spectral.NS_COEFFS[MUON_NS_PRESETS[block.ns_coeffs]], beta=block.beta,
      nesterov=block.nesterov, weight_decay=opt.weight_decay, eps=opt.eps,
      adam_b1=opt.b1, adam_b2=opt.b2, adam_weight_decay=0.0,
      adam_learning_rate=lambda t: schedule(t) * block.adam_lr_scale,
      muon_weight_dimension_numbers=dim_numbers)


def _lipschitz_projection(opt: Any, schedule: optax.Schedule) -> Any:
  """`optimizer.lipschitz` -> a projection (None when projection='none' and no caps)."""
  lip, parts = opt.lipschitz, []
  iters = lip.power_iters
  w_max = lip.w_max
  if lip.projection == "soft_cap":
    lr = lambda t: schedule(t) * opt.muon.matrix_lr_scale
    parts.append(lipschitz_lib.spectral_soft_cap(
        w_max, lipschitz_lib.muon_update_bound(lr, MUON_NS_PRESETS[opt.muon.ns_coeffs]),
        weight_decay=lambda t: lr(t) * opt.weight_decay))
  elif lip.projection != "none":
    parts.append({
        "normalize": lambda: lipschitz_lib.spectral_normalize(w_max, iters),
        "hammer": lambda: lipschitz_lib.spectral_hammer(w_max, iters),
        "spectral_decay": lambda: lipschitz_lib.spectral_weight_decay(
            lip.spectral_decay, iters),
        "hard_cap": lambda: lipschitz_lib.spectral_hard_cap(w_max),
        "exact_cap": lambda: lipschitz_lib.spectral_exact_cap(w_max),
    }[lip.projection]())
  if lip.head_w_max:
    head = lambda params: labels.role_mask(params, ("head",))
    parts.append({
        "normalize": lambda: lipschitz_lib.spectral_normalize(lip.head_w_max, iters,
                                                              mask=head),
        "hard_cap": lambda: lipschitz_lib.spectral_hard_cap(lip.head_w_max, mask=head),
        "exact_cap": lambda: lipschitz_lib.spectral_exact_cap(lip.head_w_max, mask=head),
    }[lip.head_projection]())
  if lip.embed_max_rms:
    parts.append(lipschitz_lib.embedding_rms_cap(lip.embed_max_rms))
  return lipschitz_lib.compose(*parts) if parts else None


def _constrained(opt: Any, tx: optax.GradientTransformation,
                 total_steps: int) -> optax.GradientTransformation:
  projection = _lipschitz_projection(opt, make_schedule(opt, total_steps))
  return tx if projection is None else lipschitz_lib.constrain(tx, projection)


BUILDERS: dict[str, Builder] = {
    "muon": _muon,
    "adamw": _adamw,
    "adam_l2": _adam_l2,
    "alphadecay_adamw": _alpha_decay(coupled=False),
    "alphadecay_adam_l2": _alpha_decay(coupled=True),
    "awd": _awd,
    "adadecay": _adadecay,
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
    return _constrained(opt, tx, total_steps)
  tx = _clipped(opt, tx)
  pert = opt.sam.perturbation
  if pert.kind != "none":
    tx = sam_lib.sam_wrap(tx, _perturbation(pert.kind, pert.rho, pert.variant, opt))
  return _constrained(opt, tx, total_steps)


def state_metrics(opt_state: Any) -> dict[str, Any]:
  """Metrics that transforms expose from their state, for logging.

  Every state node with a `log_metrics()` method (e.g. a NamedTuple state of one of our
  transforms) contributes its dict, found anywhere in the (chained, masked, wrapped...)
  state, including inside another such node (AlphaDecay inside a SAM wrapper).
  """
  out: dict[str, Any] = {}

  def visit(node: Any) -> None:
    if callable(getattr(node, "log_metrics", None)):
      out.update(node.log_metrics())
    children = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
    for child in children:
      if child is not node:
        visit(child)

  visit(opt_state)
  return out


def state_bytes(opt_state: Any) -> int:
  """Bytes held by an optimizer state (works on abstract ShapeDtypeStructs too)."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state)
                 if hasattr(x, "dtype")))
