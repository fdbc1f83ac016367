"""Pure jnp spectral math on (stacks of) matrices; knows nothing of optax, flax or configs.

Every function takes arrays [..., m, n]: the last two axes are the matrix, leading axes
are stacked (layers, heads) and come back as leading axes of the result. All math runs
in float32.

Empirical spectral density (ESD) and heavy-tail exponent (AlphaDecay, arXiv 2506.14562):
  esd(W)           ascending eigenvalues of the Gram matrix of the smaller side
                   (W^T W if m >= n else W W^T) = squared singular values, N = min(m, n);
                   by SVD instead when the Gram would be too ill-conditioned for float32.
  hill_alpha(lam)  power-law exponent of the ESD tail,
                   xmin = lam[floor(N/2)] ("median", the reference's choice) or the
                   candidate with least Kolmogorov-Smirnov distance ("ks", WeightWatcher);
                   alpha = 1 + n / sum_{j >= i} ln(lam_j / xmin), n = N - i.
Degenerate inputs (all zero, rank one, NaN/Inf) give finite values and valid = False.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
XMIN_MODES = ("median", "ks")
# Fallback reported for matrices whose tail cannot be fitted (valid = False); the
# typical value of a random matrix at init, so plots and maps stay in range.
FALLBACK_ALPHA = 2.0


def _f32(w: Array) -> Array:
  return jnp.asarray(w, jnp.float32)


ESD_METHODS = ("auto", "gram", "svd")
# Below this median/max eigenvalue ratio the Gram matrix's squared condition number
# costs float32 too much: Cauchy-like weights (ratio ~1e-5) lose ~1e-3 in alpha.
_ILL_CONDITIONED = 1e-3


def esd(w: Array, method: str = "auto") -> Array:
  """Ascending eigenvalues of the smaller Gram matrix, [..., min(m, n)] (= sigma_i^2).

  "gram": eigenvalues of the min(m, n)-square Gram (see `_symmetric_eigvals`), 5-7x
  cheaper than svdvals on CPU.
  "svd": squared singular values (accurate for ill-conditioned matrices).
  "auto": Gram, recomputed by SVD (under `lax.cond`) only when some matrix's median
  eigenvalue is below 1e-3 of its largest.
  Rounding negatives are clipped to 0; non-finite input gives NaN eigenvalues, which
  `fit_tail` flags as invalid.
  """
  return esd_many([w], method)[0]


def _in_sequence(inputs: Sequence[Array], fn: Callable[[Array], Any]) -> list[Any]:
  """fn over stacks of matrices, one matrix at a time, each stack gated on the previous
  result (`optimization_barrier`), `fn` mapped over the stack with `lax.map`.

  Why: jaxlib's CPU LAPACK kernels (jax 0.10.2) split a batch over XLA's intra-op
  thread pool and block on it; several such kernels at once (several leaves, or the
  same kernel on several simulated devices) deadlocked the pool on a 2-core machine.
  One matrix per call, one call at a time, never blocks on the pool.
  """
  outs: list = []
  for x in inputs:
    if outs:
      x, _ = jax.lax.optimization_barrier((x, jax.tree.leaves(outs[-1])[0]))
    lead = x.shape[:-2]
    flat = x.reshape((-1,) + x.shape[-2:])
    out = jax.lax.map(fn, flat)
    outs.append(jax.tree.map(lambda o: o.reshape(lead + o.shape[1:]), out))
  return outs


def map_matrices(fn: Callable[[Array], Any], x: Array) -> Any:
  """`fn` on each matrix of a stack [..., m, n], one LAPACK call at a time (see
  `_in_sequence`): the way to call jnp.linalg on stacked parameters on CPU."""
  return _in_sequence([x], fn)[0]


def _tridiagonal_eigvals(grams: Sequence[Array]) -> list[Array]:
  """Ascending eigenvalues of symmetric [k, n, n] stacks: LAPACK Householder
  tridiagonalisation (sytrd, one matrix per call, see `_in_sequence`), then Sturm
  bisection on the tridiagonal, vectorised over the stack in plain XLA.

  Why not eigvalsh: jaxlib's CPU eigh always computes eigenvectors (syevd, jobz=V).
  This path costs one sytrd plus O(n^2) bisection per matrix: ~4x faster on 512^2
  Grams, and at least as accurate (bisection to ~eps * |T|).
  """
  tri = _in_sequence(grams, lambda a: jax.lax.linalg.tridiagonal(a, lower=True)[1:3])
  bisect = jax.vmap(lambda d, e: jax.scipy.linalg.eigh_tridiagonal(d, e, eigvals_only=True))
  return [bisect(d, e) for d, e in tri]


def _symmetric_eigvals(grams: Sequence[Array]) -> list[Array]:
  """Ascending eigenvalues of symmetric [k, n, n] stacks, by the fastest safe route per
  backend: tridiagonal + bisection on CPU; batched eigvalsh elsewhere (GPU solvers
  batch natively, TPU's eigh is XLA's own Jacobi; neither has the CPU pool deadlock)."""
  def on_cpu(*gs: Array) -> list[Array]:
    return _tridiagonal_eigvals(gs)

  def elsewhere(*gs: Array) -> list[Array]:
    return [jnp.linalg.eigvalsh(g) for g in gs]

  return jax.lax.platform_dependent(*grams, cpu=on_cpu, default=elsewhere)


def esd_many(ws: Sequence[Array], method: str = "auto") -> list[Array]:
  """`esd` of several stacks of matrices, grouped by Gram size.

  All matrices whose smaller side is n form one [*, n, n] stack (e.g. every attention
  and MLP matrix of a LLaMA layer stack), whose eigenvalues come from
  `_symmetric_eigvals`. "auto" falls back to per-matrix SVDs for
  every input when any matrix is ill-conditioned.
  """
  if method not in ESD_METHODS:
    raise ValueError(f"esd method={method!r} is not one of {ESD_METHODS}")
  ws = [_f32(w) for w in ws]
  finite = [jnp.all(jnp.isfinite(w), axis=(-2, -1)) for w in ws]
  ws = [jnp.where(f[..., None, None], w, 0.0) for w, f in zip(ws, finite)]  # no NaN in LAPACK

  def by_svd() -> list[Array]:
    sigmas = _in_sequence(ws, lambda w: jnp.linalg.svd(w, compute_uv=False))
    return [jnp.sort(s * s, axis=-1) for s in sigmas]

  def by_gram() -> list[Array]:
    grams = [(jnp.swapaxes(w, -1, -2) @ w) if w.shape[-2] >= w.shape[-1]
             else (w @ jnp.swapaxes(w, -1, -2)) for w in ws]
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(grams):
      groups.setdefault(g.shape[-1], []).append(i)
    batches = [jnp.concatenate([grams[i].reshape(-1, n, n) for i in idx])
               for n, idx in groups.items()]
    eigs = [jnp.maximum(e, 0.0) for e in _symmetric_eigvals(batches)]
    out: list[Array] = [None] * len(ws)
    for e, idx in zip(eigs, groups.values()):
      offset = 0
      for i in idx:
        count = math.prod(grams[i].shape[:-2])
        out[i] = e[offset:offset + count].reshape(grams[i].shape[:-1])
        offset += count
    return out

  if method == "svd":
    eigs = by_svd()
  else:
    eigs = by_gram()
    if method == "auto":
      ill = jnp.any(jnp.stack([jnp.any(e[..., e.shape[-1] // 2] < _ILL_CONDITIONED * e[..., -1])
                               for e in eigs]))
      eigs = jax.lax.cond(ill, by_svd, lambda: eigs)
  return [jnp.where(f[..., None], e, jnp.nan) for e, f in zip(eigs, finite)]


class TailFit(NamedTuple):
  alpha: Array   # [...] power-law exponent (FALLBACK_ALPHA where invalid)
  xmin: Array    # [...] tail threshold eigenvalue
  valid: Array   # [...] bool: the fit is meaningful


def _resolvable(lam_max: Array, n: int) -> Array:
  """Smallest eigenvalue float32 resolves: singular values carry ~n*eps*sigma_max error
  (`esd` switches to SVD before the Gram's coarser eps*lam_max error matters)."""
  return lam_max * (n * jnp.finfo(jnp.float32).eps) ** 2


def _tail_is_fittable(eigs: Array, xmin: Array) -> Array:
  """Finite spectrum whose threshold is resolvable above float32 rounding of lam_max."""
  lam_max = eigs[..., -1]
  tol = _resolvable(lam_max, eigs.shape[-1])
  return jnp.all(jnp.isfinite(eigs), axis=-1) & (lam_max > 0) & (xmin > tol)


def _median_fit(eigs: Array) -> TailFit:
  n_all = eigs.shape[-1]
  i = n_all // 2
  xmin = eigs[..., i]
  ok = _tail_is_fittable(eigs, xmin)
  safe_xmin = jnp.where(ok, xmin, 1.0)
  tail = jnp.where(ok[..., None], eigs[..., i:], 1.0)
  log_sum = jnp.sum(jnp.log(tail / safe_xmin[..., None]), axis=-1)
  ok = ok & (log_sum > 0)  # all tail eigenvalues equal: no tail to fit
  alpha = 1.0 + (n_all - i) / jnp.where(ok, log_sum, 1.0)
  return TailFit(jnp.where(ok, alpha, FALLBACK_ALPHA), xmin, ok)


def _ks_fit_one(eigs: Array) -> TailFit:
  """WeightWatcher-style: every xmin candidate lam_k (k <= N-2), least KS distance wins."""
  n_all = eigs.shape[-1]
  k = jnp.arange(n_all)
  n_tail = (n_all - k).astype(jnp.float32)
  ok_all = jnp.all(jnp.isfinite(eigs)) & (eigs[-1] > 0)
  lam = jnp.where(ok_all, eigs, 1.0)
  tol = _resolvable(lam[-1], n_all)
  safe = jnp.maximum(lam, tol)
  log_lam = jnp.log(safe)
  suffix = jnp.cumsum(log_lam[::-1])[::-1]            # sum_{j >= k} ln lam_j
  log_sum = suffix - n_tail * log_lam                  # sum_{j >= k} ln(lam_j / lam_k)
  candidate = (k <= n_all - 2) & (lam > tol) & (log_sum > 0)
  alpha_k = 1.0 + n_tail / jnp.where(candidate, log_sum, 1.0)
  # KS distance of tail k: max_j>=k |S_j - P_j|, S_j = (j-k+1)/n_k, P_j the fitted CDF.
  j = k[None, :]
  in_tail = j >= k[:, None]
  ratio = jnp.exp(log_lam[None, :] - log_lam[:, None])          # lam_j / lam_k
  cdf = 1.0 - ratio ** (1.0 - alpha_k[:, None])
  emp = (j - k[:, None] + 1) / n_tail[:, None]
  dist = jnp.max(jnp.where(in_tail, jnp.abs(emp - cdf), 0.0), axis=-1)
  dist = jnp.where(candidate, dist, jnp.inf)
  best = jnp.argmin(dist)
  ok = ok_all & candidate[best]
  return TailFit(jnp.where(ok, alpha_k[best], FALLBACK_ALPHA), lam[best], ok)


def fit_tail(eigs: Array, xmin: str = "median") -> TailFit:
  """Power-law tail fit of ascending eigenvalues [..., N]; see the module docstring."""
  if xmin not in XMIN_MODES:
    raise ValueError(f"xmin={xmin!r} is not one of {XMIN_MODES}")
  eigs = _f32(eigs)
  if xmin == "median":
    return _median_fit(eigs)
  lead = eigs.shape[:-1]
  flat = eigs.reshape((-1, eigs.shape[-1]))
  # lax.map, not vmap: the KS search holds an N x N table per matrix.
  fit = jax.lax.map(_ks_fit_one, flat)
  return TailFit(*(x.reshape(lead) for x in fit))


def hill_alpha(eigs: Array, xmin: str = "median") -> Array:
  """Heavy-tail exponent alpha of an ESD (finite; FALLBACK_ALPHA where degenerate)."""
  return fit_tail(eigs, xmin).alpha


def spectral_norm(w: Array) -> Array:
  """Largest singular value sigma_max, [...] (exact, via the Gram eigenvalues)."""
  return jnp.sqrt(esd(w)[..., -1])


def frobenius_norm(w: Array) -> Array:
  """||W||_F = sqrt(sum w_ij^2), [...]."""
  w = _f32(w)
  return jnp.sqrt(jnp.sum(w * w, axis=(-2, -1)))


def stable_rank(w: Array) -> Array:
  """||W||_F^2 / sigma_max^2 in [1, min(m, n)]; 0 for the zero matrix."""
  eigs = esd(w)
  top = eigs[..., -1]
  return jnp.where(top > 0, jnp.sum(eigs, axis=-1) / jnp.where(top > 0, top, 1.0), 0.0)


class SpectralStats(NamedTuple):
  alpha: Array
  valid: Array
  spectral_norm: Array
  stable_rank: Array


def spectral_stats(w: Array, xmin: str = "median") -> SpectralStats:
  """alpha, validity, spectral norm and stable rank from one eigendecomposition."""
  eigs = esd(w)
  fit = fit_tail(eigs, xmin)
  top = jnp.nan_to_num(eigs[..., -1])
  srank = jnp.where(top > 0, jnp.nan_to_num(jnp.sum(eigs, axis=-1)) / jnp.where(
      top > 0, top, 1.0), 0.0)
  return SpectralStats(fit.alpha, fit.valid, jnp.sqrt(top), srank)


# ---------------------------------------------------------------------------------------
# Spectral projections for Lipschitz-constrained training (arXiv 2507.13338).
#
# Raw units here: sigma is the ordinary largest singular value of the last two axes.
# `transforms/lipschitz.py` converts to RMS->RMS units (sqrt(fan_in/fan_out) * sigma).
# Every map below is an odd matrix function f(W) = U f(S) V^T built from Gram products
# A = M^T M of the smaller side, so it runs on stacked [..., m, n] input as batched matmuls.
# ---------------------------------------------------------------------------------------

# Newton-Schulz coefficient sets (a, b, c) per step: X <- aX + b (XX^T)X + c (XX^T)^2 X.
NS_COEFFS: dict[str, tuple[tuple[float, float, float], ...]] = {
    # Keller Jordan's Muon quintic, 5 steps (optax.contrib.muon 'standard').
    "keller": ((3.4445, -4.7750, 2.0315),) * 5,
    # optax.contrib.muon 'dion' preset (Ahn et al., arXiv 2504.05295), 5 steps.
    "dion": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377),
             (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046),
             (2.8366, -3.0525, 1.2012)),
    # The 6-step set of the paper's code (credited to @YouJiacheng and @leloykun).
    "six_step": ((3955 / 1024, -8306 / 1024, 5008 / 1024),
                 (3735 / 1024, -6681 / 1024, 3463 / 1024),
                 (3799 / 1024, -6499 / 1024, 3211 / 1024),
                 (4019 / 1024, -6385 / 1024, 2906 / 1024),
                 (2677 / 1024, -3029 / 1024, 1162 / 1024),
                 (2172 / 1024, -1833 / 1024, 682 / 1024)),
}
# Hard cap (Franz Cesista's coefficients in the paper's code): 4 odd quintic steps that
# map [0, 3.5] into [0, 1.011] with slope 0.951 at zero, applied to W / w_max.
HARD_CAP_COEFFS = ((0.805032, 0.206361, -0.019763), (0.649867, 0.162935, -0.011150),
                   (1.810259, -0.200265, 0.008251), (1.004384, -0.183490, 0.014413))
# The soft cap p is increasing on [0, k] iff a k^2 <= 1/3 (where p'(s) first vanishes),
# i.e. iff k / w_max <= 1 / g(1/3) = 81/62 = 1.3065 (g below).
SOFT_CAP_MAX_RATIO = 81.0 / 62.0
_POWER_ITERATION_SEED = 20250717


def polynomial_sup(coeffs: tuple[tuple[float, float, float], ...],
                   upper: float = 1.0, points: int = 1_000_001) -> float:
  """max over s in [0, upper] of the composed odd quintics (float64 grid, host side).

  For Newton-Schulz input scaled by its Frobenius norm (singular values <= 1) this is the
  largest singular value the iteration can output: 1.2024 (keller), 1.14502 (dion).
  """
  import numpy as np  # host-side constant; keeps the module's jnp-only hot path
  s = np.linspace(0.0, upper, points)
  for a, b, c in coeffs:
    s = a * s + b * s**3 + c * s**5
  return float(s.max())


def _gram_side(w: Array) -> tuple[Array, bool]:
  """W, or W^T when that makes the Gram M^T M the smaller (min(m, n)-square) one."""
  transpose = w.shape[-2] < w.shape[-1]
  return (jnp.swapaxes(w, -1, -2) if transpose else w), transpose


def odd_polynomial_steps(w: Array, coeffs) -> Array:
  """Applies M <- M (a I + b A + c A^2), A = M^T M, per step; on singular values
  s <- a s + b s^3 + c s^5. `coeffs`: rows (a, b, c), each entry a float or an array
  broadcastable to the stacked shape [...]."""
  m, transpose = _gram_side(_f32(w))
  for a, b, c in coeffs:
    gram = jnp.swapaxes(m, -1, -2) @ m
    a, b, c = (jnp.asarray(x, jnp.float32)[..., None, None] for x in (a, b, c))
    m = a * m + m @ (b * gram + c * (gram @ gram))
  return jnp.swapaxes(m, -1, -2) if transpose else m


def newton_schulz_polar(w: Array, coeffs: str = "keller", eps: float = 1e-7) -> Array:
  """Approximate polar factor U V^T of W = U S V^T by Newton-Schulz on W / ||W||_F.

  Output singular values are the composed quintic of sigma_i / ||W||_F: within
  [~0.68, 1.2024] (keller), [~0.98, 1.14502] (dion) for sigma_i / ||W||_F > 0.01.
  """
  if coeffs not in NS_COEFFS:
    raise ValueError(f"coeffs={coeffs!r} is not one of {tuple(NS_COEFFS)}")
  w = _f32(w)
  w = w / (jnp.sqrt(jnp.sum(w * w, axis=(-2, -1), keepdims=True)) + eps)
  return odd_polynomial_steps(w, NS_COEFFS[coeffs])


def power_iteration(w: Array, num_iters: int = 16, seed: int = _POWER_ITERATION_SEED
                    ) -> tuple[Array, Array, Array]:
  """Top singular triple (u [..., m], sigma [...], v [..., n]) by `num_iters` fixed steps
  of v <- W^T W v / ||.|| from a start vector drawn from a fixed key (deterministic and
  identical on every device). sigma_hat = ||W v|| never exceeds sigma_max.
  """
  w = _f32(w)
  m, n = w.shape[-2:]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), m), n)
  v = jax.random.normal(key, w.shape[:-2] + (n,), jnp.float32)
  tiny = jnp.finfo(jnp.float32).tiny

  def normalize(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), tiny)

  def body(_: int, v: Array) -> Array:
    wv = jnp.einsum("...mn,...n->...m", w, v)
    return normalize(jnp.einsum("...mn,...m->...n", w, wv))

  v = jax.lax.fori_loop(0, num_iters, body, normalize(v))
  wv = jnp.einsum("...mn,...n->...m", w, v)
  sigma = jnp.linalg.norm(wv, axis=-1)
  return normalize(wv), sigma, v


def soft_cap_polynomial(s: Array, a: Array) -> Array:
  """p(s) = s - 3a^2 s^5 + 3a^3 s^7 - a^4 s^9, the soft cap on one singular value."""
  y = a * s * s
  return s * (1.0 - 3.0 * y**2 + 3.0 * y**3 - y**4)


def soft_cap_coupling(w_max: Array, weight_decay: Array, update_norm: Array,
                      iters: int = 40) -> Array:
  """Smallest a >= 0 with p(k) = w_max, k = w_max (1 - weight_decay) + update_norm.

  With x = a k^2, p(k) = k g(x), g(x) = 1 - 3x^2 + 3x^3 - x^4, strictly decreasing on
  [0, 1] from 1 to 0; x solves g(x) = w_max / k by bisection. a = 0 when k <= w_max (no
  cap needed; the paper's code returns 1 there). Elementwise on arrays, jittable.
  The guarantee sigma <= k => p(sigma) <= w_max holds for k <= SOFT_CAP_MAX_RATIO w_max.
  """
  w_max, weight_decay, update_norm = (jnp.asarray(x, jnp.float32)
                                      for x in (w_max, weight_decay, update_norm))
  k = w_max * (1.0 - weight_decay) + update_norm
  target = jnp.clip(w_max / jnp.where(k > 0, k, 1.0), 0.0, 1.0)
  g = lambda x: 1.0 - 3.0 * x**2 + 3.0 * x**3 - x**4

  def body(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = g(mid) > target  # root lies to the right of mid
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(k), jnp.ones_like(k)))
  # hi keeps g(hi) <= target: p(k) <= w_max, rounding to the safe side.
  return jnp.where(k > w_max, hi / (k * k), 0.0)


def soft_cap(w: Array, a: Array) -> Array:
  """M <- M(I - aA) then M <- M(I + aA') (A = M^T M of each current M): p on singular values.

  Computed as the equal single product M q(A), q(A) = I + A^2 (-3a^2 I + 3a^3 A - a^4 A^2),
  which costs 4mn^2 + 4n^3 flops (n <= m) instead of 8mn^2. `a`: scalar or [...].
  """
  m, transpose = _gram_side(_f32(w))
  a = jnp.asarray(a, jnp.float32)[..., None, None]
  gram = jnp.swapaxes(m, -1, -2) @ m
  gram2 = gram @ gram
  inner = 3.0 * a**3 * gram - a**4 * gram2
  out = m + m @ (gram2 @ inner - 3.0 * a**2 * gram2)
  return jnp.swapaxes(out, -1, -2) if transpose else out


def hard_cap(w: Array, w_max: Array) -> Array:
  """~min(sigma, w_max) on singular values: HARD_CAP_COEFFS on W / w_max, times w_max."""
  w_max = jnp.asarray(w_max, jnp.float32)[..., None, None]
  return w_max * odd_polynomial_steps(_f32(w) / w_max, HARD_CAP_COEFFS)


def exact_cap(w: Array, w_max: Array) -> Array:
  """U min(S, w_max) V^T by SVD (exact; the oracle for the polynomial caps)."""
  u, s, vt = map_matrices(lambda m: jnp.linalg.svd(m, full_matrices=False), _f32(w))
  s = jnp.minimum(s, jnp.asarray(w_max, jnp.float32)[..., None])
  return (u * s[..., None, :]) @ vt
