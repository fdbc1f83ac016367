"""Builders for Muon (optax.contrib.muon) and the Lipschitz weight projections
(arXiv 2507.13338) that any optimizer can be constrained by."""

from __future__ import annotations

from typing import Any

import jax
import optax

from alphadecay_jax import labels
from alphadecay_jax import spectral
from alphadecay_jax.optimizers.common import make_schedule
from alphadecay_jax.transforms import lipschitz as lipschitz_lib

MUON_NS_PRESETS = {"standard": "keller", "dion": "dion", "six_step": "six_step"}
PROJECTIONS = ("none", "normalize", "hammer", "spectral_decay", "soft_cap", "hard_cap",
               "exact_cap")
HEAD_PROJECTIONS = ("normalize", "hard_cap", "exact_cap")


def validate_muon_lipschitz(opt: Any) -> None:
  """`optimizer.muon` and `optimizer.lipschitz`, and the soft cap's rate condition."""
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


def muon(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
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


def lipschitz_projection(opt: Any, schedule: optax.Schedule) -> Any:
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


def constrained(opt: Any, tx: optax.GradientTransformation,
                 total_steps: int) -> optax.GradientTransformation:
  """`tx` followed by the configured projection: u <- P(w + u) - w (arXiv 2507.13338)."""
  projection = lipschitz_projection(opt, make_schedule(opt, total_steps))
  return tx if projection is None else lipschitz_lib.constrain(tx, projection)
