"""AlphaDecay: per-module weight decay from the heavy-tail exponent of each matrix's ESD.

arXiv 2506.14562 (reference code: github hed-ucas/AlphaDecay). For every tuned weight
matrix W_i (attention q/k/v/o and MLP gate/up/down; not layer 0's q, the embedding or
the head), every `refresh_every` steps:

  lam = esd(W_i)                                   squared singular values, ascending
  alpha_i = 1 + n / sum_{j >= N/2} ln(lam_j / lam_{N/2})       (spectral.hill_alpha)
  s_i = s1 + (s2 - s1) (alpha_i - min_k alpha_k) / (max_k alpha_k - min_k alpha_k)
        (= s2 for every module when all alphas are equal)
  u <- u + wd_t * s_i * W_i                         (untuned or unfittable: s_i = 1)

Heavier tail (smaller alpha) means weaker decay. Where the transform sits decides the
kind of decay: before `scale_by_adam` it is coupled L2, after it decoupled (AdamW).
The statistics refresh inside the jitted update under `lax.cond`, so nothing leaves
the device and steps between refreshes pay only the multiply-add.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alphadecay_jax import labels as labels_lib
from alphadecay_jax import spectral

MaskOrFn = Any  # a tree of bools, a callable params -> tree, or None (everything)


class AlphaDecayState(NamedTuple):
  """Per-module statistics, each leaf shaped like its parameter's stacked axes
  (e.g. [layers]); None for leaves that are not measured."""
  count: jax.Array
  alpha: Any
  valid: Any
  scale: Any   # decay multiplier s_i; wd_i = s_i * wd_t

  def log_metrics(self) -> dict[str, jax.Array]:
    out = {}
    for field in ("alpha", "scale"):
      for path, value in jax.tree_util.tree_leaves_with_path(getattr(self, field)):
        out[f"alpha_decay/{field}/{path_name(path)}"] = value
    return out


def path_name(path: tuple) -> str:
  """'blocks.attn_q' from a jax key path."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def resolve_mask(mask: MaskOrFn, params: Any) -> Any:
  """Tree of bools for `params` from a tree, a callable or None (all True)."""
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  return mask(params) if callable(mask) else mask


def broadcast_to_param(stat: jax.Array, view: labels_lib.MatrixView) -> jax.Array:
  """Per-matrix values [*stacked] -> broadcastable against the parameter's shape."""
  shape = [1] * len(view.shape)
  for axis, size in zip(view.stacked_axes, view.stacked_shape):
    shape[axis] = size
  return stat.reshape(shape)


def alpha_to_scale(alphas: Any, valid: Any, tuned: Any,
                   s_range: tuple[float, float]) -> Any:
  """Linear map of alpha onto [s1, s2] over all tuned, valid modules (the paper's
  `np.interp(alpha, [min, max], [s1 wd, s2 wd])`); 1 elsewhere."""
  s1, s2 = s_range
  use = jax.tree.map(lambda v, t: v & jnp.asarray(t, bool), valid, tuned)
  leaves = list(zip(jax.tree.leaves(alphas), jax.tree.leaves(use)))
  if not leaves:
    return jax.tree.map(jnp.ones_like, alphas)
  lo = jnp.min(jnp.stack([jnp.min(jnp.where(u, a, jnp.inf)) for a, u in leaves]))
  hi = jnp.max(jnp.stack([jnp.max(jnp.where(u, a, -jnp.inf)) for a, u in leaves]))
  span = hi - lo
  def leaf(a, u):
    frac = jnp.where(span > 0, (a - lo) / jnp.where(span > 0, span, 1.0), 1.0)
    return jnp.where(u, s1 + (s2 - s1) * frac, 1.0).astype(jnp.float32)
  return jax.tree.map(leaf, alphas, use)


def add_alpha_decayed_weights(
    weight_decay: float | optax.Schedule,
    s_range: tuple[float, float] = (0.6666, 5.0),
    refresh_every: int = 500,
    xmin: str = "median",
    mask: MaskOrFn = None,
    tuned_mask: Any | Callable[[Any], Any] | None = None,
    measure_roles: tuple[str, ...] = labels_lib.HIDDEN,
    view_fn: labels_lib.ViewFn | None = None,
) -> optax.GradientTransformation:
  """u <- u + wd_t * s_i * W with s_i from each module's ESD alpha (arXiv 2506.14562).

  Args:
    weight_decay: base decay wd (a float or a schedule of the step count).
    s_range: (s1, s2): the least and most heavy-tailed tuned modules get s1*wd and s2*wd.
      Paper defaults: (0.6666, 3) for Adam + L2 at wd 1e-5, (0.6666, 5) otherwise.
    refresh_every: alphas are recomputed at steps 0, k, 2k, ... (the paper: 500).
    xmin: 'median' (the reference) or 'ks' (WeightWatcher) tail threshold.
    mask: which leaves are decayed at all (as in `optax.add_decayed_weights`).
    tuned_mask: per-matrix booleans (stacked shape per leaf) of modules whose decay is
      set from alpha; default `labels.tuned_module_mask` (all attention / MLP matrices
      but layer 0's q). Other decayed leaves get the base decay.
    measure_roles: roles whose ESD is computed (and logged) at each refresh.
    view_fn: custom `labels` matrix views for parameters not laid out as
      [..., fan_in, fan_out].

  Under `optax.inject_hyperparams`, declare callables that are not schedules static:
  `inject_hyperparams(add_alpha_decayed_weights, static_args=("mask", "tuned_mask"))`.
  """
  if not isinstance(refresh_every, (int, np.integer, jax.Array)) or (
      isinstance(refresh_every, (int, np.integer)) and refresh_every < 1):
    raise ValueError(f"refresh_every={refresh_every!r} must be a positive integer")
  if len(s_range) != 2 or not 0 <= s_range[0] <= s_range[1]:
    raise ValueError(f"s_range={s_range!r} must be (s1, s2) with 0 <= s1 <= s2")
  if xmin not in spectral.XMIN_MODES:
    raise ValueError(f"xmin={xmin!r} is not one of {spectral.XMIN_MODES}")
  roles = frozenset(measure_roles)

  def measured(params: Any) -> Any:
    views = labels_lib.matrix_views(params, view_fn)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: v if v is not None and labels_lib.role_of(p) in roles else None,
        views, is_leaf=labels_lib.is_view_leaf)

  def empty_stats(params: Any) -> tuple[Any, Any, Any]:
    views = measured(params)
    def leaf(v, fill, dtype):
      return jnp.full(v.stacked_shape, fill, dtype) if v is not None else None
    is_leaf = labels_lib.is_view_leaf
    return (jax.tree.map(lambda v: leaf(v, spectral.FALLBACK_ALPHA, jnp.float32), views,
                         is_leaf=is_leaf),
            jax.tree.map(lambda v: leaf(v, False, jnp.bool_), views, is_leaf=is_leaf),
            jax.tree.map(lambda v: leaf(v, 1.0, jnp.float32), views, is_leaf=is_leaf))

  def refresh(params: Any) -> tuple[Any, Any, Any]:
    views = measured(params)
    # Every measured matrix in one `esd_many` call: it sequences the LAPACK work.
    pairs = [(v, w) for v, w in zip(jax.tree.leaves(views, is_leaf=labels_lib.is_view_leaf),
                                    jax.tree.leaves(params)) if v is not None]
    eigs = iter(spectral.esd_many([v.to_matrices(w) for v, w in pairs]))
    fits = jax.tree.map(lambda v: spectral.fit_tail(next(eigs), xmin) if v is not None
                        else None, views, is_leaf=labels_lib.is_view_leaf)
    is_fit = lambda x: x is None or isinstance(x, spectral.TailFit)
    alpha = jax.tree.map(lambda f: None if f is None else f.alpha, fits, is_leaf=is_fit)
    valid = jax.tree.map(lambda f: None if f is None else f.valid, fits, is_leaf=is_fit)
    tuned = jax.tree.map(lambda t, f: np.asarray(t, bool) if f is not None else None,
                         resolve_tuned(params), fits, is_leaf=is_fit)
    return alpha, valid, alpha_to_scale(alpha, valid, tuned, s_range)

  def resolve_tuned(params: Any) -> Any:
    if tuned_mask is None:
      return labels_lib.tuned_module_mask(params, view_fn=view_fn)
    return tuned_mask(params) if callable(tuned_mask) else tuned_mask

  def init_fn(params: Any) -> AlphaDecayState:
    alpha, valid, scale = empty_stats(params)
    return AlphaDecayState(jnp.zeros((), jnp.int32), alpha, valid, scale)

  def update_fn(updates: Any, state: AlphaDecayState, params: Any = None
                ) -> tuple[Any, AlphaDecayState]:
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    alpha, valid, scale = jax.lax.cond(
        state.count % refresh_every == 0,
        lambda: refresh(params),
        lambda: (state.alpha, state.valid, state.scale))
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    views = labels_lib.matrix_views(params, view_fn)
    decayed = resolve_mask(mask, params)

    def leaf(u, p, s, v, on):
      if not on:
        return u
      factor = broadcast_to_param(s, v) if s is not None else 1.0
      return u + (wd * factor * p).astype(u.dtype)

    new_updates = jax.tree.map(leaf, updates, params, scale, views, decayed,
                               is_leaf=lambda x: x is None)
    return new_updates, AlphaDecayState(
        optax.safe_increment(state.count), alpha, valid, scale)

  return optax.GradientTransformation(init_fn, update_fn)


def alphadecay_adamw(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9,
                     b2: float = 0.999, eps: float = 1e-8,
                     weight_decay: float | optax.Schedule = 1e-4, **alpha_kwargs: Any
                     ) -> optax.GradientTransformation:
  """AdamW with AlphaDecay's decoupled per-module decay: -lr_t (adam(g) + wd_t s_i W).

  With s_range = (1, 1) this is exactly `optax.adamw` (same mask).
  """
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     add_alpha_decayed_weights(weight_decay, **alpha_kwargs),
                     optax.scale_by_learning_rate(learning_rate))


def alphadecay_adam_l2(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9,
                       b2: float = 0.999, eps: float = 1e-8,
                       weight_decay: float | optax.Schedule = 1e-5, **alpha_kwargs: Any
                       ) -> optax.GradientTransformation:
  """Adam on g + wd_t s_i W (coupled L2), the paper's main setting (wd 1e-5, s2 = 3)."""
  alpha_kwargs.setdefault("s_range", (0.6666, 3.0))
  return optax.chain(add_alpha_decayed_weights(weight_decay, **alpha_kwargs),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))

