"""Builders for LightSAM (arXiv 2505.24399), SAM (arXiv 2010.01412) and ASAM
(arXiv 2102.11600), and the perturbation that wraps any other optimizer."""

from __future__ import annotations

from typing import Any, Mapping

import optax

from alphadecay_jax.optimizers.common import Builder, clipped
from alphadecay_jax.transforms import sam as sam_lib

SAM_NAMES = ("lightsam", "sam", "asam")
PERTURBATIONS = ("none", "lightsam", "sam", "asam")


def validate_sam(opt: Any, names: tuple[str, ...]) -> None:
  """`optimizer.sam`; `names` are the registered optimizer names (SAM bases)."""
  sam, pert = opt.sam, opt.sam.perturbation
  for key, value in (("sam.rho", sam.rho), ("sam.perturbation.rho", pert.rho),
                     ("sam.asam_eta", sam.asam_eta)):
    if not value >= 0:
      raise ValueError(f"optimizer.{key}={value!r} must be >= 0")
  for key, value in (("sam.variant", sam.variant), ("sam.perturbation.variant", pert.variant)):
    if value not in sam_lib.VARIANTS:
      raise ValueError(f"optimizer.{key}={value!r} is not one of {sam_lib.VARIANTS}")
  bases = tuple(n for n in names if n not in SAM_NAMES)
  if opt.name in ("sam", "asam") and sam.base not in bases:
    raise ValueError(f"optimizer.sam.base={sam.base!r} is not one of {bases}")
  if pert.kind not in PERTURBATIONS:
    raise ValueError(f"optimizer.sam.perturbation.kind={pert.kind!r} is not one of "
                     f"{PERTURBATIONS}")
  if pert.kind != "none" and opt.name in SAM_NAMES:
    raise ValueError(f"optimizer.sam.perturbation.kind={pert.kind!r} needs a non-SAM "
                     f"optimizer.name, not {opt.name!r} (allowed: {bases})")


def perturbation(kind: str, rho: float, variant: str, opt: Any
                 ) -> optax.GradientTransformation:
  """The ascent step of `kind`: LightSAM's adaptive radius, SAM's or ASAM's."""
  if kind == "lightsam":
    return sam_lib.adaptive_perturbation(rho, variant, b2=opt.b2, eps=opt.eps)
  if kind == "sam":
    return sam_lib.sam(rho)
  return sam_lib.asam(rho, eta=opt.sam.asam_eta)


# The SAM builders clip inside (the descent gradient); build_optimizer adds no clipping.
def lightsam(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """LightSAM: adaptive perturbation and adaptive descent (arXiv 2505.24399)."""
  descent = sam_lib.adaptive_descent(schedule, opt.sam.variant, opt.b1, opt.b2, opt.eps)
  return sam_lib.sam_wrap(clipped(opt, descent),
                          perturbation("lightsam", opt.sam.rho, opt.sam.variant, opt))


def sam_around_base(kind: str, builders: Mapping[str, Builder]) -> Builder:
  """SAM / ASAM perturbation around `builders[optimizer.sam.base]`."""
  def build(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    base = clipped(opt, builders[opt.sam.base](opt, schedule))
    return sam_lib.sam_wrap(base, perturbation(kind, opt.sam.rho, opt.sam.variant, opt))
  return build


def with_perturbation(opt: Any, tx: optax.GradientTransformation
                      ) -> optax.GradientTransformation:
  """`tx` wrapped in `optimizer.sam.perturbation` (unchanged when its kind is 'none')."""
  pert = opt.sam.perturbation
  if pert.kind == "none":
    return tx
  return sam_lib.sam_wrap(tx, perturbation(pert.kind, pert.rho, pert.variant, opt))
