"""The AlphaDecay paper's weight-decay baselines, AWD and AdaDecay, as optax wrappers.

Both set the decay from the *raw gradient*, so they wrap the direction transform
(e.g. `optax.scale_by_adam()`) instead of sitting somewhere in a chain:
  coupled=True    d = direction(g + wd_t * W)          (L2, the paper's Adam table)
  coupled=False   d = direction(g) + wd_t * W          (decoupled, AdamW-style)
and the caller chains the learning rate after: u = -lr_t * d.

AWD, adaptive weight decay (Ghiasi et al., arXiv 2210.00094), as in the AlphaDecay
reference (`AWD_nips2023.py`): global norms over all parameters,
  lam_t = lambda_awd * ||g|| / (||W|| + 1e-8),   lam_bar <- 0.1 lam_bar + 0.9 lam_t,
and lam_bar is the decay of every decayed parameter.

AdaDecay (Nakamura & Hong, arXiv 1907.08931): decay grows with the gradient magnitude
normalised within a layer, theta = 2 / (1 + exp(-a z)), wd_i = theta_i * wd.
  granularity='parameter'  the paper: z = (|g_ij| - mean|g|) / std|g| per matrix, each step.
  granularity='module'     the AlphaDecay reference's baseline: z from each tuned
                           module's gradient norm, normalised over the modules of the
                           same layer, refreshed every `refresh_every` steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from alphadecay_jax import labels as labels_lib
from alphadecay_jax.transforms.alpha_decay import (MaskOrFn, broadcast_to_param, path_name,
                                                  resolve_mask)


def _apply_decay(direction: optax.GradientTransformation, grads: Any, inner: Any,
                 params: Any, decay: Any, coupled: bool) -> tuple[Any, Any]:
  """direction(g + decay) if coupled else direction(g) + decay."""
  add = lambda a, b: a + b.astype(a.dtype)
  if coupled:
    return direction.update(jax.tree.map(add, grads, decay), inner, params)
  out, inner = direction.update(grads, inner, params)
  return jax.tree.map(add, out, decay), inner


def _masked_decay(params: Any, mask: MaskOrFn, coefficient: Any) -> Any:
  """coefficient(path-free leaf fn) * W on decayed leaves, 0 elsewhere."""
  on = resolve_mask(mask, params)
  return jax.tree.map(lambda p, m, c: c * p if m else jnp.zeros_like(p),
                      params, on, coefficient)


class AWDState(NamedTuple):
  lambda_bar: jax.Array
  inner: Any

  def log_metrics(self) -> dict[str, jax.Array]:
    return {"awd/lambda_bar": self.lambda_bar}


def awd(direction: optax.GradientTransformation, lambda_awd: float, *,
        coupled: bool = True, mask: MaskOrFn = None) -> optax.GradientTransformation:
  """Adaptive weight decay (arXiv 2210.00094) around `direction`; see module docstring."""
  if lambda_awd < 0:
    raise ValueError(f"lambda_awd={lambda_awd} must be >= 0")

  def init_fn(params: Any) -> AWDState:
    return AWDState(jnp.zeros((), jnp.float32), direction.init(params))

  def update_fn(grads: Any, state: AWDState, params: Any = None) -> tuple[Any, AWDState]:
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    lam_t = lambda_awd * optax.tree.norm(grads) / (optax.tree.norm(params) + 1e-8)
    lam_bar = 0.1 * state.lambda_bar + 0.9 * jax.lax.stop_gradient(lam_t)
    decay = _masked_decay(params, mask, jax.tree.map(lambda _: lam_bar, params))
    out, inner = _apply_decay(direction, grads, state.inner, params, decay, coupled)
    return out, AWDState(lam_bar, inner)

  return optax.GradientTransformation(init_fn, update_fn)


class AdaDecayState(NamedTuple):
  count: jax.Array
  theta: Any   # per-module multipliers (module granularity); None elsewhere
  inner: Any

  def log_metrics(self) -> dict[str, jax.Array]:
    return {f"adadecay/theta/{path_name(path)}": theta
            for path, theta in jax.tree_util.tree_leaves_with_path(self.theta)}


def _module_theta(grads: Any, tuned: Any, views: Any, alpha: float) -> Any:
  """theta per tuned module from gradient norms normalised over each layer's modules."""
  norms = jax.tree.map(
      lambda g, v, t: (jnp.sqrt(jnp.sum(jnp.square(v.to_matrices(g).astype(jnp.float32)),
                                        axis=(-2, -1)))
                       if v is not None and t.any() else None),
      grads, views, tuned, is_leaf=lambda x: x is None)
  present = [n for n in jax.tree.leaves(norms) if n is not None]
  shapes = {n.shape for n in present}
  if not present:
    return jax.tree.map(lambda _: None, grads)
  masks = [jnp.asarray(t) for n, t in zip(jax.tree.leaves(norms, is_leaf=lambda x: x is None),
                                          jax.tree.leaves(tuned)) if n is not None]
  if len(shapes) == 1:   # stacked layers: normalise over the modules of each layer
    stack, keep = jnp.stack(present), jnp.stack(masks)
    count = jnp.maximum(jnp.sum(keep, axis=0), 1)
    mean = jnp.sum(jnp.where(keep, stack, 0.0), axis=0) / count
    std = jnp.sqrt(jnp.sum(jnp.where(keep, (stack - mean) ** 2, 0.0), axis=0) / count)
  else:                  # unstacked: one group of all modules
    flat, keep = jnp.concatenate([n.ravel() for n in present]), jnp.concatenate(
        [m.ravel() for m in masks])
    count = jnp.maximum(jnp.sum(keep), 1)
    mean = jnp.sum(jnp.where(keep, flat, 0.0)) / count
    std = jnp.sqrt(jnp.sum(jnp.where(keep, (flat - mean) ** 2, 0.0)) / count)
  return jax.tree.map(
      lambda n, t: (jnp.where(t, 2.0 * jax.nn.sigmoid(alpha * (n - mean) / (std + 1e-8)),
                              1.0) if n is not None else None),
      norms, tuned, is_leaf=lambda x: x is None)


def _parameter_theta(g: jax.Array, alpha: float) -> jax.Array:
  """2 sigmoid(a z), z = (|g| - mean|g|) / std|g| within each matrix (last two axes)."""
  a = jnp.abs(g.astype(jnp.float32))
  axes = (-2, -1) if a.ndim >= 2 else tuple(range(a.ndim))
  mean = jnp.mean(a, axis=axes, keepdims=True)
  std = jnp.std(a, axis=axes, keepdims=True)
  return 2.0 * jax.nn.sigmoid(alpha * (a - mean) / (std + 1e-8))


def adadecay(direction: optax.GradientTransformation,
             weight_decay: float | optax.Schedule, *, alpha: float = 4.0,
             granularity: str = "module", refresh_every: int = 500,
             coupled: bool = True, mask: MaskOrFn = None,
             view_fn: labels_lib.ViewFn | None = None) -> optax.GradientTransformation:
  """AdaDecay (arXiv 1907.08931) around `direction`; see the module docstring."""
  if granularity not in ("module", "parameter"):
    raise ValueError(f"granularity={granularity!r} is not one of ('module', 'parameter')")
  if refresh_every < 1:
    raise ValueError(f"refresh_every={refresh_every} must be >= 1")

  def empty_theta(params: Any) -> Any:
    if granularity == "parameter":
      return jax.tree.map(lambda _: None, params)
    tuned = labels_lib.tuned_module_mask(params, view_fn=view_fn)
    views = labels_lib.matrix_views(params, view_fn)
    return jax.tree.map(
        lambda v, t: (jnp.ones(v.stacked_shape, jnp.float32)
                      if v is not None and t.any() else None),
        views, tuned, is_leaf=labels_lib.is_view_leaf)

  def init_fn(params: Any) -> AdaDecayState:
    return AdaDecayState(jnp.zeros((), jnp.int32), empty_theta(params),
                         direction.init(params))

  def update_fn(grads: Any, state: AdaDecayState, params: Any = None
                ) -> tuple[Any, AdaDecayState]:
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    views = labels_lib.matrix_views(params, view_fn)
    theta = state.theta
    if granularity == "module":
      tuned = labels_lib.tuned_module_mask(params, view_fn=view_fn)
      theta = jax.lax.cond(state.count % refresh_every == 0,
                           lambda: _module_theta(grads, tuned, views, alpha),
                           lambda: state.theta)
      coeff = jax.tree.map(
          lambda t, v: wd * broadcast_to_param(t, v) if t is not None else wd,
          theta, views, is_leaf=lambda x: x is None)
    else:
      coeff = jax.tree.map(lambda g: wd * _parameter_theta(g, alpha), grads)
    decay = _masked_decay(params, mask, coeff)
    out, inner = _apply_decay(direction, grads, state.inner, params, decay, coupled)
    return out, AdaDecayState(optax.safe_increment(state.count), theta, inner)

  return optax.GradientTransformation(init_fn, update_fn)
