r"""Stateless gradient multi-normalisation: SinkGD and a SWAN-style variant.

Gradient multi-normalisation (Scetbon et al., arXiv 2502.06742) replaces Adam's
moments for the weight matrices by a fixed-point projection of each gradient matrix
G (m x n) onto the intersection of several norm spheres, found by alternating the
projections (normalisers) N_1, ..., N_K for L rounds:

    G <- N_K( ... N_2( N_1(G) ) ... )      repeated L times,     theta <- theta - lr * G.

SinkGD is the instance with K = 2 (the paper's SR-Sinkhorn), L = 5:

    rows:     G <- sqrt(n) * G / ||G_i,:||_2     (every row gets l2 norm sqrt(n))
    columns:  G <- sqrt(m) * G / ||G_:,j||_2     (every column gets l2 norm sqrt(m))

so after the last column step ||G||_F = sqrt(mn), i.e. the update's RMS is 1, and as
L grows the row norms converge to sqrt(n) too (Sinkhorn's fixed point). The SWAN-style
variant (SWAN, arXiv 2412.13148, is the paper's special case) uses row standardisation
followed by Newton-Schulz whitening, G <- (G G^T)^{-1/2} G, once (L = 1). Neither keeps
state: the matrix leaves' optimizer state is empty. Embeddings, head and norms get AdamW.

Conventions. A matrix is the last two axes of the leaf's matrix view
(`labels.default_view`: Flax's (fan_in, fan_out), so m = fan_in); leading stacked axes
(layers from nnx.scan, heads) are vmapped, each matrix normalised on its own. PyTorch
stores weights as (out, in), so the paper's "rows first" on its layout is "columns
first" on ours; pass `normalizers=(column_l2, row_l2)` for that order.

Each normaliser sees G / RMS(G) (every built-in is scale invariant, so this changes
nothing in exact arithmetic) so that `eps` is relative to the matrix's own scale:
norms are floored at `eps`, hence zero rows, columns or gradients give zero updates,
never NaN, and tiny gradients cannot overflow. Everything runs in float32.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from alphadecay_jax import labels
from alphadecay_jax import spectral

# A normaliser maps one float32 matrix [m, n] (and the norm floor eps) to a matrix of
# the same shape; stacked matrices are handled by vmap, so it only sees 2-D input.
Normalizer = Callable[[jax.Array, float], jax.Array]
ViewFn = Callable[[tuple, Any], "labels.MatrixView | None"]
ScalarOrSchedule = float | jax.Array | optax.Schedule
MaskOrFn = Any | Callable[[Any], Any]

# Muon's quintic Newton-Schulz coefficients (Keller Jordan; optax.contrib.muon default):
# 5 steps push every singular value into ~[0.7, 1.2] fast. (1.5, -0.5, 0.0) is the
# classical cubic iteration, which converges to the exact polar factor but slowly.
MUON_NS_COEFFS = spectral.NS_COEFFS["keller"][0]
CUBIC_NS_COEFFS = (1.5, -0.5, 0.0)


def row_l2(g: jax.Array, eps: float) -> jax.Array:
  """Every row to l2 norm sqrt(n): G_i,: <- sqrt(n) G_i,: / max(||G_i,:||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=1, keepdims=True))
  return g * (math.sqrt(g.shape[1]) / jnp.maximum(norm, eps))


def column_l2(g: jax.Array, eps: float) -> jax.Array:
  """Every column to l2 norm sqrt(m): G_:,j <- sqrt(m) G_:,j / max(||G_:,j||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=0, keepdims=True))
  return g * (math.sqrt(g.shape[0]) / jnp.maximum(norm, eps))


def row_standardize(g: jax.Array, eps: float) -> jax.Array:
  """Every row to mean 0, standard deviation 1 (so l2 norm sqrt(n)), as SWAN's GradNorm."""
  centred = g - jnp.mean(g, axis=1, keepdims=True)
  std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=1, keepdims=True))
  return centred / jnp.maximum(std, eps)


def newton_schulz_whitening(num_steps: int = 5,
                            coeffs: Sequence[float] = MUON_NS_COEFFS) -> Normalizer:
  r"""Normaliser G -> sqrt(max(m, n)) * (G G^T)^{-1/2} G by a Newton-Schulz iteration.

  X_0 = G / ||G||_F (spectral norm <= 1), then `num_steps` times
  X <- a X + (b A + c A^2) X with A = X X^T (`spectral.odd_polynomial_steps`, on the
  side whose Gram matrix is smaller). With `CUBIC_NS_COEFFS` X tends to the polar
  factor U V^T; the default (Muon's) coefficients reach singular values in ~[0.7, 1.2]
  in 5 steps. The factor sqrt(max(m, n)) gives a full-rank result RMS 1, the scale of
  SinkGD's updates, so one learning rate serves both.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1")
  steps = (tuple(float(x) for x in coeffs),) * num_steps

  def whiten(g: jax.Array, eps: float) -> jax.Array:
    x = g / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), eps)
    return spectral.odd_polynomial_steps(x, steps) * math.sqrt(max(g.shape))

  return whiten


# Caps the diagonal scalings of `_sinkhorn_row_column` so that their squares stay finite
# in float32; only rows or columns below eps * RMS for several rounds come near it.
_MAX_SCALE = 1e18


def _sinkhorn_row_column(g: jax.Array, num_iters: int, eps: float) -> jax.Array:
  """`row_l2` then `column_l2`, `num_iters` times, kept in the Sinkhorn form
  X = diag(r) G diag(c): row norms are r * sqrt(G^2 c^2), column norms
  c * sqrt((r^2)^T G^2), so each step is one matrix-vector product over G^2 instead of
  a read and a write of the whole matrix. A row or column whose squares are all zero
  (exact zeros, or entries below ~1e-19 of the RMS) keeps its scale; the explicit
  scheme would leave exact zeros at zero too."""
  m, n = g.shape
  sq = jnp.square(g)

  def rescale(scale: jax.Array, norm: jax.Array, target: float) -> jax.Array:
    new = jnp.minimum(scale * (target / jnp.maximum(norm, eps)), _MAX_SCALE)
    return jnp.where(norm > 0, new, scale)

  r = jnp.ones((m,), jnp.float32)
  c = jnp.ones((n,), jnp.float32)
  for _ in range(num_iters):
    r = rescale(r, r * jnp.sqrt(sq @ jnp.square(c)), math.sqrt(n))
    c = rescale(c, c * jnp.sqrt(jnp.square(r) @ sq), math.sqrt(m))
  return g * r[:, None] * c[None, :]


def multi_normalize(g: jax.Array, normalizers: Sequence[Normalizer], num_iters: int,
                    eps: float) -> jax.Array:
  """The alternating scheme on one float32 matrix [m, n] (no stacked axes)."""
  # Pre-scale by the RMS so eps is relative; a zero matrix stays exactly zero.
  rms = jnp.sqrt(jnp.mean(jnp.square(g)))
  g = g / jnp.maximum(rms, jnp.finfo(jnp.float32).tiny)
  if tuple(normalizers) == (row_l2, column_l2):  # SinkGD: the same steps, fewer passes
    return _sinkhorn_row_column(g, num_iters, eps)
  for _ in range(num_iters):
    for normalize in normalizers:
      g = normalize(g, eps)
  return g


def _normalize_leaf(x: jax.Array, view: labels.MatrixView, normalizers, num_iters,
                    eps) -> jax.Array:
  matrices = view.to_matrices(x.astype(jnp.float32))
  fn = lambda m: multi_normalize(m, normalizers, num_iters, eps)
  for _ in view.stacked_shape:  # one vmap per stacked axis: each matrix on its own
    fn = jax.vmap(fn)
  return view.from_matrices(fn(matrices)).astype(x.dtype)


def scale_by_multi_normalization(normalizers: Sequence[Normalizer] = (row_l2, column_l2),
                                 num_iters: int = 5, eps: float = 1e-8,
                                 view_fn: ViewFn | None = None
                                 ) -> optax.GradientTransformation:
  """Stateless multi-normalisation of every matrix leaf (arXiv 2502.06742).

  Applies `normalizers` in turn, `num_iters` times, to each matrix of each leaf's
  matrix view (`view_fn(path, leaf)`, default `labels.default_view`: last two axes,
  leading axes vmapped). Leaves without a view (vectors, scalars) pass unchanged: use
  `optax.masked` / `multi_transform` (as `sinkgd` does) to choose which leaves it sees.
  Defaults are SinkGD's: row l2 then column l2, 5 rounds. The state is empty.
  """
  if num_iters < 1:
    raise ValueError(f"num_iters={num_iters} must be >= 1")
  if not normalizers:
    raise ValueError("normalizers must name at least one normaliser")
  if not eps > 0:
    raise ValueError(f"eps={eps} must be > 0")
  normalizers = tuple(normalizers)
  get_view = view_fn or (lambda _, x: labels.default_view(x))

  def update_fn(updates: Any, state: optax.EmptyState, params: Any = None
                ) -> tuple[Any, optax.EmptyState]:
    del params

    def leaf(path: tuple, g: jax.Array) -> jax.Array:
      view = get_view(path, g)
      if view is None:
        return g
      return _normalize_leaf(g, view, normalizers, num_iters, eps)

    return jax.tree_util.tree_map_with_path(leaf, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _default_adam_decay_mask(params: Any) -> Any:
  """Decay matrices other than the embedding (the head); never norms or biases.

  By role, not only ndim: scanned norm scales are [layers, d], 2-D but not matrices.
  """
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x.ndim >= 2 and labels.role_of(p) not in ("embed", "norm"), params)


def with_adamw_for_the_rest(matrix_tx: optax.GradientTransformation,
                            learning_rate: ScalarOrSchedule,
                            adam_learning_rate: ScalarOrSchedule | None = None,
                            weight_decay: float = 0.0,
                            adam_weight_decay: float | None = None,
                            b1: float = 0.9, b2: float = 0.999, adam_eps: float = 1e-8,
                            matrix_mask: MaskOrFn = labels.hidden_matrix_mask,
                            adam_decay_mask: MaskOrFn = _default_adam_decay_mask
                            ) -> optax.GradientTransformation:
  """`matrix_tx` (+ decoupled decay, lr) on `matrix_mask` leaves, AdamW on the others.

    matrices:  u = -lr_t * (matrix_tx(g) + wd * w)
    the rest:  u = -adam_lr_t * (adam(g) + adam_wd * w [adam_decay_mask leaves])
  `adam_learning_rate` / `adam_weight_decay` default to `learning_rate` / `weight_decay`.
  """
  adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
  adam_wd = weight_decay if adam_weight_decay is None else adam_weight_decay
  matrix = optax.chain(matrix_tx, optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))
  adamw = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=adam_eps),
                      optax.add_decayed_weights(adam_wd, mask=adam_decay_mask),
                      optax.scale_by_learning_rate(adam_lr))

  def param_labels(params: Any) -> Any:
    mask = matrix_mask(params) if callable(matrix_mask) else matrix_mask
    return jax.tree.map(lambda m: "matrix" if m else "adamw", mask)

  return optax.multi_transform({"matrix": matrix, "adamw": adamw}, param_labels)


def sinkgd(learning_rate: ScalarOrSchedule, num_iters: int = 5, eps: float = 1e-8,
           **kwargs: Any) -> optax.GradientTransformation:
  """SinkGD (arXiv 2502.06742): SR-Sinkhorn (row l2, column l2; `num_iters` rounds) on
  hidden matrices, AdamW on embeddings, head and norms. Keyword arguments as in
  `with_adamw_for_the_rest` (adam_learning_rate, weight_decay, b1, b2, masks ...).
  """
  return with_adamw_for_the_rest(
      scale_by_multi_normalization((row_l2, column_l2), num_iters, eps),
      learning_rate, **kwargs)


def swan(learning_rate: ScalarOrSchedule, num_iters: int = 1, ns_steps: int = 5,
         ns_coeffs: Sequence[float] = MUON_NS_COEFFS, eps: float = 1e-8,
         **kwargs: Any) -> optax.GradientTransformation:
  """SWAN-style (arXiv 2412.13148, as the special case of arXiv 2502.06742): row
  standardisation then Newton-Schulz whitening on hidden matrices, AdamW on the rest.
  """
  normalizers = (row_standardize, newton_schulz_whitening(ns_steps, ns_coeffs))
  return with_adamw_for_the_rest(
      scale_by_multi_normalization(normalizers, num_iters, eps), learning_rate, **kwargs)
