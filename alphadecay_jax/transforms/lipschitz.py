r"""Spectral weight projections and the wrapper that applies them after each step.

Lipschitz-constrained training (Newhouse et al., "Training Transformers with Enforced
Lipschitz Constants", arXiv 2507.13338): every step is decay, step, then a projection P
that bounds each weight matrix's RMS->RMS operator norm

    ||W||_rms = sqrt(fan_in / fan_out) * sigma_max(W)       (Flax kernels: [fan_in, fan_out])

i.e. the largest ratio RMS(x W) / RMS(x). Every projection below works on the matrix
M = sqrt(fan_in / fan_out) W, whose plain spectral norm is ||W||_rms, and maps back:

  spectral_normalize     M / max(1, sigma_hat / w_max)           (sigma_hat: power iteration)
  spectral_hammer        M + (w_max - sigma_hat) u v^T           (top singular value := w_max)
  spectral_weight_decay  M - lambda sigma_hat u v^T              (top singular value * (1 - lambda))
  spectral_soft_cap      p(M), p(s) = s - 3a^2 s^5 + 3a^3 s^7 - a^4 s^9, a from
                         soft_cap_coupling(w_max, decay_t, eta_t): sigma <= k => p(sigma) <= w_max
                         for k = w_max (1 - decay_t) + eta_t <= 1.3065 w_max
  spectral_hard_cap      4 odd quintics: ~min(sigma, w_max), <= 1.011 w_max up to 3.5 w_max
  spectral_exact_cap     U min(S, w_max) V^T by SVD
  embedding_rms_cap      each token's embedding vector (a row of our [vocab, d] table; a
                         column in the paper's [d, vocab] layout) to RMS <= max_rms

`constrain(tx, projection)` returns updates P(params + u) - params, so
`optax.apply_updates` lands on projected weights and the whole thing stays one optax
transform (it can sit inside optax.chain, MultiSteps, SAM wrappers...). Projections are
pure functions of (params, step) with no state: the power iteration starts from a fixed
key, so every device computes the same thing.

With Muon the update's RMS->RMS norm is bounded a priori (`muon_update_bound`): optax's
Newton-Schulz output has singular values <= sup of its composed quintic (1.2024 keller,
1.14502 dion) and optax scales it by sqrt(max(1, fan_out/fan_in)), so
eta_t = lr_t * sup * sqrt(max(1, fan_in/fan_out)). The soft cap then *guarantees* the
cap for weights that satisfied it before the step; other optimizers have no such bound,
so pair them with the hard or exact cap.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from alphadecay_jax import labels
from alphadecay_jax import spectral

Array = jax.Array
# (params, step) -> projected params; `step` counts the updates made before this one.
Projection = Callable[[Any, Array], Any]
# (stacked RMS-unit matrices [..., fan_in, fan_out], step, fan_in, fan_out) -> same shape.
MatrixFn = Callable[[Array, Array, int, int], Array]
MaskOrFn = Any | Callable[[Any], Any]
ViewFn = Callable[[tuple, Any], "labels.MatrixView | None"]
ScalarOrSchedule = float | Callable[[Array], Array]


def _at(value: ScalarOrSchedule, step: Array) -> Array:
  return jnp.asarray(value(step) if callable(value) else value, jnp.float32)


def on_matrices(fn: MatrixFn, mask: MaskOrFn = labels.hidden_matrix_mask,
                view_fn: ViewFn | None = None, sequential: bool = False) -> Projection:
  """Lifts a per-matrix map in RMS->RMS units to a projection of a parameter tree.

  `mask` (a bool tree or a function of params) picks the leaves; each is seen through
  its matrix view (default: last two axes (fan_in, fan_out), leading axes stacked), so
  a stacked [layers, fan_in, fan_out] kernel is projected layer by layer. Float32 math.
  `sequential` runs the leaves one after another: maps that call LAPACK (SVD) must not
  run concurrently on XLA:CPU, which can deadlock (see `spectral._in_sequence`).
  """
  def project(params: Any, step: Array) -> Any:
    masks = mask(params) if callable(mask) else mask
    previous: list[Array] = []

    def leaf(path: tuple, p: Array, selected: bool) -> Array:
      view = view_fn(path, p) if view_fn else labels.default_view(p)
      if not selected or view is None:
        return p
      fan_in, fan_out = view.matrix_shape
      scale = math.sqrt(fan_in / fan_out)
      m = view.to_matrices(p.astype(jnp.float32)) * scale
      if sequential and previous:
        m, _ = jax.lax.optimization_barrier((m, previous[-1]))
      out = fn(m, step, fan_in, fan_out) / scale
      previous.append(out)
      return view.from_matrices(out).astype(p.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params, masks)
  return project


def spectral_normalize(w_max: float, num_iters: int = 16, **kw: Any) -> Projection:
  """M / max(1, sigma_hat / w_max): rescales only matrices whose norm exceeds w_max."""
  def fn(m: Array, *_: Any) -> Array:
    sigma = spectral.power_iteration(m, num_iters)[1]
    return m / jnp.maximum(1.0, sigma / w_max)[..., None, None]
  return on_matrices(fn, **kw)


def _rank_one(m: Array, coef: Array, u: Array, v: Array) -> Array:
  return m + coef[..., None, None] * u[..., :, None] * v[..., None, :]


def spectral_hammer(w_max: float, num_iters: int = 16, **kw: Any) -> Projection:
  """Sets the top singular value to w_max (u v^T correction); the others stay put."""
  def fn(m: Array, *_: Any) -> Array:
    u, sigma, v = spectral.power_iteration(m, num_iters)
    return _rank_one(m, w_max - sigma, u, v)
  return on_matrices(fn, **kw)


def spectral_weight_decay(decay: ScalarOrSchedule, num_iters: int = 16,
                          **kw: Any) -> Projection:
  """Shrinks the top singular value by the factor (1 - decay_t)."""
  def fn(m: Array, step: Array, *_: Any) -> Array:
    u, sigma, v = spectral.power_iteration(m, num_iters)
    return _rank_one(m, -_at(decay, step) * sigma, u, v)
  return on_matrices(fn, **kw)


UpdateBound = Callable[[Array, int, int], Array]  # (step, fan_in, fan_out) -> eta_t


def spectral_soft_cap(w_max: float, update_norm: float | UpdateBound,
                      weight_decay: ScalarOrSchedule = 0.0, **kw: Any) -> Projection:
  """Soft cap p with the coupling a_t = soft_cap_coupling(w_max, decay_t, eta_t).

  `update_norm`: eta_t, an upper bound on the step's RMS->RMS update norm (a float, or
  (step, fan_in, fan_out) -> eta, e.g. `muon_update_bound`); `weight_decay`: decay_t,
  the decoupled decay factor of that step (lr_t * wd). If ||W_t|| <= w_max then
  ||W_t + u_t|| <= k_t and p maps [0, k_t] into [0, w_max] (k_t <= 1.3065 w_max).
  """
  def fn(m: Array, step: Array, fan_in: int, fan_out: int) -> Array:
    eta = (update_norm(step, fan_in, fan_out) if callable(update_norm)
           else jnp.asarray(update_norm, jnp.float32))
    a = spectral.soft_cap_coupling(w_max, _at(weight_decay, step), eta)
    return spectral.soft_cap(m, a)
  return on_matrices(fn, **kw)


def spectral_hard_cap(w_max: float, **kw: Any) -> Projection:
  """~min(sigma, w_max) by 4 odd quintic steps (<= 1.011 w_max for sigma <= 3.5 w_max)."""
  return on_matrices(lambda m, *_: spectral.hard_cap(m, w_max), **kw)


def spectral_exact_cap(w_max: float, **kw: Any) -> Projection:
  """U min(S, w_max) V^T by SVD: exact, and the costliest."""
  kw.setdefault("sequential", True)
  return on_matrices(lambda m, *_: spectral.exact_cap(m, w_max), **kw)


def embedding_rms_cap(max_rms: float = 1.0, mask: MaskOrFn | None = None) -> Projection:
  """Every token vector (row of an [vocab, d] table) to RMS <= max_rms: then the
  embedding's Lipschitz constant from one-hot inputs to RMS units is <= max_rms."""
  mask = mask or (lambda params: labels.role_mask(params, ("embed",)))

  def project(params: Any, step: Array) -> Any:
    del step

    def leaf(p: Array, selected: bool) -> Array:
      if not selected:
        return p
      x = p.astype(jnp.float32)
      rms = jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True))
      return (x / jnp.maximum(1.0, rms / max_rms)).astype(p.dtype)

    return jax.tree.map(leaf, params, mask(params) if callable(mask) else mask)
  return project


def compose(*projections: Projection) -> Projection:
  """Applies the projections in order (meant for disjoint masks: hidden, head, embed)."""
  def project(params: Any, step: Array) -> Any:
    for p in projections:
      params = p(params, step)
    return params
  return project


def muon_update_bound(learning_rate: ScalarOrSchedule, ns_coeffs: str = "dion",
                      margin: float = 1e-4) -> UpdateBound:
  """eta_t for optax.contrib.muon's matrices (default width scaling, Frobenius
  preconditioning): lr_t * sup_NS * sqrt(max(1, fan_in / fan_out)) * (1 + margin).

  sup_NS is the largest value of the composed Newton-Schulz quintic on [0, 1]; the
  margin covers float32 rounding of the iteration.
  """
  sup = spectral.polynomial_sup(spectral.NS_COEFFS[ns_coeffs]) * (1.0 + margin)

  def bound(step: Array, fan_in: int, fan_out: int) -> Array:
    return _at(learning_rate, step) * sup * math.sqrt(max(1.0, fan_in / fan_out))
  return bound


class ConstrainState(NamedTuple):
  count: Array   # int32: updates made so far (the `step` passed to the projection)
  inner: Any     # the wrapped transform's state


def constrain(tx: optax.GradientTransformation,
              projection: Projection) -> optax.GradientTransformationExtraArgs:
  """Wraps `tx` so that its updates become P(params + u) - params.

  Extra arguments (e.g. SAM's grad_fn) pass through to `tx`. Needs `params`.
  """
  tx = optax.with_extra_args_support(tx)

  def init_fn(params: Any) -> ConstrainState:
    return ConstrainState(jnp.zeros((), jnp.int32), tx.init(params))

  def update_fn(updates: Any, state: ConstrainState, params: Any = None,
                **extra_args: Any) -> tuple[Any, ConstrainState]:
    if params is None:
      raise ValueError("constrain: the projection needs params (tx.update(g, s, params))")
    updates, inner = tx.update(updates, state.inner, params, **extra_args)
    projected = projection(optax.apply_updates(params, updates), state.count)
    updates = jax.tree.map(lambda new, old: (new - old).astype(old.dtype), projected,
                           params)
    return updates, ConstrainState(optax.safe_increment(state.count), inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
