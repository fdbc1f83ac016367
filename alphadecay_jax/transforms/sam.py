r"""Sharpness-aware minimisation as composable optax transforms: LightSAM, SAM, ASAM.

Framework. A *perturbation* is an ordinary `optax.GradientTransformation` that maps the
ascent gradient s_t = grad f(theta_t; batch) to an offset e_t (NOT a descent update:
the perturbed point is w_t = theta_t + e_t). `sam_wrap(base_tx, perturbation)` is a
`GradientTransformationExtraArgs` whose `update(grads, state, params, *, grad_fn)`
receives s_t as `grads` and a `grad_fn(params) -> grads` over the same batch; it
evaluates g_t = grad_fn(w_t) and feeds g_t to any base optax optimizer, whose update is
taken at theta_t. Nothing param-shaped is cached: w_t lives only inside the step.

LightSAM (arXiv 2505.24399), AdaGrad-Norm variant (`variant="adagrad_norm"`), global
norms over the whole pytree, u_0 = v_0 = eps^2:
  u_t = u_{t-1} + ||s_t||^2,   e_t = rho_t s_t / sqrt(u_t)            (adaptive_perturbation)
  g_t = grad f(theta_t + e_t), v_t = v_{t-1} + ||g_t||^2,
  theta_{t+1} = theta_t - eta_t g_t / sqrt(v_t)                      (adaptive_descent)
AdaGrad variant (INFERRED, the paper body was unavailable): the same per coordinate,
  u_t = u_{t-1} + s_t^2, e_t = rho_t s_t / sqrt(u_t); v_t = v_{t-1} + g_t^2,
  update = -eta_t g_t / sqrt(v_t)  (elementwise; u_0 = v_0 = eps^2 per coordinate).
  Its radius at t = 1 is ~rho per coordinate, i.e. ~rho sqrt(#nonzero coords) in l2.
Adam variant (INFERRED): perturbation n_t = b2 n_{t-1} + (1 - b2) s_t^2 (n_0 = 0),
  e_t = rho_t s_t / (sqrt(n_t / (1 - b2^t)) + eps); descent = Adam on g_t (optax
  `scale_by_adam`: bias-corrected EMAs m, v with b1, b2; update -eta_t m^ / (sqrt(v^) + eps)).
SAM (arXiv 2010.01412):  e_t = rho_t s_t / max(||s_t||, eps).
ASAM (arXiv 2102.11600): T = |theta_t| + eta_T (elementwise),
  e_t = rho_t T^2 s_t / max(||T s_t||, eps); eta_T = 0 is REFERENCES.md's T = |theta|.
`max(., eps)` instead of optax.contrib's bare division: a zero gradient gives e_t = 0.

Logged each step (via `SAMState.log_metrics`): the effective radius ||e_t|| (equals
rho ||s_t|| / sqrt(u_t) for AdaGrad-Norm: ~rho at t = 1, ~rho / sqrt(t) later) and the
effective step size ||update_t|| / ||g_t|| (equals eta_t / sqrt(v_t) for AdaGrad-Norm).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | jax.Array | optax.Schedule
VARIANTS = ("adagrad_norm", "adagrad", "adam")


def _acc_dtype(tree: Any) -> jnp.dtype:
  """Accumulators are at least float32 (never bf16), float64 for float64 params."""
  return jnp.result_type(jnp.float32, *[x.dtype for x in jax.tree.leaves(tree)])


def _sq_norm(tree: Any) -> jax.Array:
  """Squared global l2 norm in the accumulator dtype."""
  dtype = _acc_dtype(tree)
  return sum((jnp.sum(jnp.square(x.astype(dtype))) for x in jax.tree.leaves(tree)),
             jnp.zeros((), dtype))


def _full_like(params: Any, fill: float) -> Any:
  return jax.tree.map(lambda p: jnp.full(p.shape, fill, jnp.promote_types(p.dtype, jnp.float32)),
                      params)


def _value(x: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return x(count) if callable(x) else x  # a Python float stays weakly typed


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")


class AdaptivePerturbationState(NamedTuple):
  count: jax.Array   # int32: steps taken (drives rho schedules and Adam's bias correction)
  acc: Any           # scalar u_t (adagrad_norm) or a params-shaped u_t / n_t tree


def adaptive_perturbation(rho: ScalarOrSchedule, variant: str = "adagrad_norm",
                          b2: float = 0.999, eps: float = 1e-8
                          ) -> optax.GradientTransformation:
  """LightSAM's adaptive perturbation e_t (module docstring for the equations)."""
  _check_variant(variant)

  def init(params: Any) -> AdaptivePerturbationState:
    if variant == "adagrad_norm":
      acc = jnp.full((), eps ** 2, _acc_dtype(params))
    else:  # adagrad starts at eps^2 per coordinate; Adam's EMA at 0
      acc = _full_like(params, eps ** 2 if variant == "adagrad" else 0.0)
    return AdaptivePerturbationState(jnp.zeros((), jnp.int32), acc)

  def update(grads: Any, state: AdaptivePerturbationState, params: Any = None
             ) -> tuple[Any, AdaptivePerturbationState]:
    del params
    rho_t = _value(rho, state.count)
    count = state.count + 1
    if variant == "adagrad_norm":
      acc = (state.acc + _sq_norm(grads)).astype(state.acc.dtype)
      scale = rho_t / jnp.sqrt(acc)
      offset = jax.tree.map(lambda s: (scale * s).astype(s.dtype), grads)
    elif variant == "adagrad":
      acc = jax.tree.map(lambda a, s: a + jnp.square(s.astype(a.dtype)), state.acc, grads)
      offset = jax.tree.map(lambda a, s: (rho_t * s / jnp.sqrt(a)).astype(s.dtype), acc, grads)
    else:
      acc = jax.tree.map(lambda n, s: b2 * n + (1 - b2) * jnp.square(s.astype(n.dtype)),
                         state.acc, grads)
      correction = 1 - b2 ** count.astype(_acc_dtype(acc))  # float32 here loses ~1e-5
      offset = jax.tree.map(
          lambda n, s: (rho_t * s / (jnp.sqrt(n / correction) + eps)).astype(s.dtype), acc, grads)
    return offset, AdaptivePerturbationState(count, acc)

  return optax.GradientTransformation(init, update)


class CountState(NamedTuple):
  count: jax.Array   # int32: drives rho schedules


def sam(rho: ScalarOrSchedule, eps: float = 1e-12) -> optax.GradientTransformation:
  """SAM's normalised perturbation (arXiv 2010.01412): e = rho s / max(||s||, eps)."""
  def update(grads: Any, state: CountState, params: Any = None) -> tuple[Any, CountState]:
    del params
    scale = _value(rho, state.count) / jnp.maximum(jnp.sqrt(_sq_norm(grads)), eps)
    return jax.tree.map(lambda s: (scale * s).astype(s.dtype), grads), CountState(state.count + 1)

  return optax.GradientTransformation(lambda _: CountState(jnp.zeros((), jnp.int32)), update)


def asam(rho: ScalarOrSchedule, eta: float = 0.01, eps: float = 1e-12
         ) -> optax.GradientTransformation:
  """ASAM's |w|-scaled perturbation (arXiv 2102.11600): T = |theta| + eta,
  e = rho T^2 s / max(||T s||, eps)."""
  def update(grads: Any, state: CountState, params: Any = None) -> tuple[Any, CountState]:
    if params is None:
      raise ValueError("asam needs params (T = |theta| + eta)")
    t = jax.tree.map(lambda p: jnp.abs(p.astype(jnp.promote_types(p.dtype, jnp.float32))) + eta,
                     params)
    ts = jax.tree.map(lambda a, s: a * s, t, grads)
    scale = _value(rho, state.count) / jnp.maximum(jnp.sqrt(_sq_norm(ts)), eps)
    offset = jax.tree.map(lambda a, x, s: (scale * a * x).astype(s.dtype), t, ts, grads)
    return offset, CountState(state.count + 1)

  return optax.GradientTransformation(lambda _: CountState(jnp.zeros((), jnp.int32)), update)


class AdaGradNormState(NamedTuple):
  count: jax.Array   # int32
  acc: jax.Array     # float32 scalar v_t


class AdaGradState(NamedTuple):
  count: jax.Array   # int32
  acc: Any           # params-shaped v_t


def adaptive_descent(learning_rate: ScalarOrSchedule, variant: str = "adagrad_norm",
                     b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                     ) -> optax.GradientTransformation:
  """LightSAM's adaptive update of theta from g_t (module docstring for the equations).

  With no perturbation this is plain AdaGrad-Norm / AdaGrad (v_0 = eps^2) / Adam.
  """
  _check_variant(variant)
  if variant == "adam":
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.scale_by_learning_rate(learning_rate))
  norm = variant == "adagrad_norm"

  def init(params: Any) -> AdaGradNormState | AdaGradState:
    zero = jnp.zeros((), jnp.int32)
    if norm:
      return AdaGradNormState(zero, jnp.full((), eps ** 2, _acc_dtype(params)))
    return AdaGradState(zero, _full_like(params, eps ** 2))

  def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
    del params
    lr = _value(learning_rate, state.count)
    if norm:
      acc = (state.acc + _sq_norm(grads)).astype(state.acc.dtype)
      scale = -lr / jnp.sqrt(acc)
      updates = jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)
      return updates, AdaGradNormState(state.count + 1, acc)
    acc = jax.tree.map(lambda a, g: a + jnp.square(g.astype(a.dtype)), state.acc, grads)
    updates = jax.tree.map(lambda a, g: (-lr * g / jnp.sqrt(a)).astype(g.dtype), acc, grads)
    return updates, AdaGradState(state.count + 1, acc)

  return optax.GradientTransformation(init, update)


class SAMState(NamedTuple):
  """State of `sam_wrap`: the two inner states and last step's diagnostics (scalars)."""
  perturbation: Any
  base: Any
  radius: jax.Array       # ||e_t||, the effective radius rho_t
  step_size: jax.Array    # ||update_t|| / ||g_t||, the effective step size
  grad_norm: jax.Array    # ||g_t||, the gradient at the perturbed point

  def log_metrics(self) -> dict[str, jax.Array]:
    return {"sam/radius": self.radius, "sam/step_size": self.step_size,
            "sam/perturbed_grad_norm": self.grad_norm}


GradFn = Callable[..., Any]


def sam_wrap(base_tx: optax.GradientTransformation,
             perturbation: optax.GradientTransformation
             ) -> optax.GradientTransformationExtraArgs:
  """Any base optax optimizer, driven by the gradient at theta + perturbation(s_t).

  update(s_t, state, theta, *, grad_fn): e_t = perturbation(s_t, theta);
  g_t = grad_fn(theta + e_t); (update_t, base state) = base_tx(g_t, theta).
  `grad_fn(params, *_)` must evaluate the same batch as s_t (extra positional arguments
  are allowed, so the train step's closure also serves optax.contrib.sam's opaque mode).
  A non-finite e_t makes g_t and update_t non-finite; it is never blended away, so the
  train step's guard on the update norm sees it and skips the step.
  """
  base_tx = optax.with_extra_args_support(base_tx)

  def init(params: Any) -> SAMState:
    zero = jnp.zeros((), _acc_dtype(params))
    return SAMState(perturbation.init(params), base_tx.init(params), zero, zero, zero)

  def update(grads: Any, state: SAMState, params: Any = None, *,
             grad_fn: GradFn | None = None, **extra_args: Any) -> tuple[Any, SAMState]:
    if grad_fn is None or params is None:
      raise ValueError("sam_wrap.update needs params and grad_fn=(params -> grads on the "
                       "same batch); the train step passes both")
    offset, p_state = perturbation.update(grads, state.perturbation, params)
    perturbed = jax.tree.map(lambda p, e: p + e.astype(p.dtype), params, offset)
    second = grad_fn(perturbed)
    updates, b_state = base_tx.update(second, state.base, params, **extra_args)
    dtype = state.radius.dtype
    g_norm = jnp.sqrt(_sq_norm(second)).astype(dtype)
    # max(., tiny): a zero gradient gives step size 0, not 0/0.
    step_size = (jnp.sqrt(_sq_norm(updates)) / jnp.maximum(g_norm, jnp.finfo(dtype).tiny)
                 ).astype(dtype)
    radius = jnp.sqrt(_sq_norm(offset)).astype(dtype)
    return updates, SAMState(p_state, b_state, radius, step_size, g_norm)

  return optax.GradientTransformationExtraArgs(init, update)


def lightsam(learning_rate: ScalarOrSchedule, rho: ScalarOrSchedule,
             variant: str = "adagrad_norm", b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """LightSAM (arXiv 2505.24399): adaptive perturbation + adaptive descent, one variant
  for both (AdaGrad-Norm as published; AdaGrad and Adam inferred, see module docstring)."""
  return sam_wrap(adaptive_descent(learning_rate, variant, b1, b2, eps),
                  adaptive_perturbation(rho, variant, b2, eps))
