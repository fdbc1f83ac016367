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

from typing import NamedTuple

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

  "gram": eigvalsh of the min(m, n)-square Gram, 3-4x cheaper than svdvals on CPU.
  "svd": squared singular values (accurate for ill-conditioned matrices).
  "auto": Gram, recomputed by SVD (for the whole stack, under `lax.cond`) only when some
  matrix's median eigenvalue is below 1e-3 of its largest.
  Rounding negatives are clipped to 0; non-finite input gives NaN eigenvalues, which
  `fit_tail` flags as invalid.
  """
  if method not in ESD_METHODS:
    raise ValueError(f"esd method={method!r} is not one of {ESD_METHODS}")
  w = _f32(w)
  m, n = w.shape[-2:]
  finite = jnp.all(jnp.isfinite(w), axis=(-2, -1), keepdims=True)
  w = jnp.where(finite, w, 0.0)  # keep NaN out of the LAPACK calls

  def by_svd() -> Array:
    sigma = jnp.linalg.svd(w, compute_uv=False)
    return jnp.sort(sigma * sigma, axis=-1)

  if method == "svd":
    eigs = by_svd()
  else:
    gram = (jnp.swapaxes(w, -1, -2) @ w) if m >= n else (w @ jnp.swapaxes(w, -1, -2))
    eigs = jnp.maximum(jnp.linalg.eigvalsh(gram), 0.0)
    if method == "auto":
      ill = jnp.any(eigs[..., min(m, n) // 2] < _ILL_CONDITIONED * eigs[..., -1])
      eigs = jax.lax.cond(ill, by_svd, lambda: eigs)
  return jnp.where(finite[..., 0], eigs, jnp.nan)


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
