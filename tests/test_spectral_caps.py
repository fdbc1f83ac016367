"""Spectral caps, power iteration and Newton-Schulz (spectral.py, arXiv 2507.13338) against
NumPy float64 SVD and the hand values in REFERENCES.md section 4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphadecay_jax import spectral


def planted(s, m=48, n=32, seed=0):
  """An m x n float64 matrix with singular values `s` (len min(m, n)) and random U, V."""
  rng = np.random.default_rng(seed)
  u = np.linalg.qr(rng.normal(size=(m, len(s))))[0]
  v = np.linalg.qr(rng.normal(size=(n, len(s))))[0]
  return (u * np.asarray(s, np.float64)) @ v.T


def svals(w):
  return np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)


def p_ref(s, a):
  return s - 3 * a**2 * s**5 + 3 * a**3 * s**7 - a**4 * s**9


# --- soft cap -------------------------------------------------------------------------

@pytest.mark.parametrize("w_max", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("ratio", [1.01, 1.15, 1.3065])
def test_soft_cap_coupling_solves_p_of_k(w_max, ratio):
  k = ratio * w_max
  a = float(spectral.soft_cap_coupling(w_max, 0.0, k - w_max))
  assert a > 0
  assert abs(p_ref(k, a) - w_max) <= 1e-6 * max(1.0, w_max)
  # The smallest such a: float64 roots of p(k) - w_max in a (degree 4 in a after / k).
  x = np.roots([-1, 3, -3, 0, 1 - w_max / k])
  x = min(r.real for r in x if abs(r.imag) < 1e-9 and r.real >= 0)
  np.testing.assert_allclose(a, x / k**2, rtol=2e-6)


def test_soft_cap_coupling_uses_decay_and_is_zero_without_need():
  assert float(spectral.soft_cap_coupling(1.0, 0.0, 0.0)) == 0.0
  assert float(spectral.soft_cap_coupling(1.0, 0.2, 0.2)) == 0.0   # k = 1.0
  assert float(spectral.soft_cap_coupling(2.0, 0.1, 0.05)) == 0.0  # k = 1.85 < 2
  # k = w_max (1 - wd) + eta: 1 * 0.9 + 0.3 = 1.2
  a = float(spectral.soft_cap_coupling(1.0, 0.1, 0.3))
  assert abs(p_ref(1.2, a) - 1.0) < 1e-6
  # Elementwise on arrays, under jit.
  a = jax.jit(spectral.soft_cap_coupling)(jnp.array([1.0, 1.0]), 0.0, jnp.array([0.0, 0.2]))
  assert a[0] == 0 and a[1] > 0


def test_soft_cap_max_ratio_is_where_p_stops_increasing():
  assert abs(spectral.SOFT_CAP_MAX_RATIO - 1.3065) < 1e-4
  k = spectral.SOFT_CAP_MAX_RATIO
  a = float(spectral.soft_cap_coupling(1.0, 0.0, k - 1.0))
  s = np.linspace(0, k, 100_001)
  assert np.all(np.diff(p_ref(s, a)) >= -1e-12)          # monotone up to k
  k2 = 1.45  # beyond the ratio p overshoots w_max inside [0, k]
  a2 = float(spectral.soft_cap_coupling(1.0, 0.0, k2 - 1.0))
  assert p_ref(np.linspace(0, k2, 100_001), a2).max() > 1.001


@pytest.mark.parametrize("ratio", [1.05, 1.2, 1.3065])
@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_soft_cap_caps_and_barely_moves_small_values(ratio, shape):
  w_max = 1.5
  k = ratio * w_max
  s = np.concatenate([np.linspace(0.01, k, 31), [k]])     # sigma <= k, one at k
  w = planted(s, *shape)
  a = float(spectral.soft_cap_coupling(w_max, 0.0, k - w_max))
  out = svals(jax.jit(spectral.soft_cap)(jnp.asarray(w, jnp.float32), a))
  assert out.max() <= w_max * (1 + 1e-5)
  np.testing.assert_allclose(np.sort(out), np.sort(p_ref(s, a)), atol=3e-6 * k)
  small = s < 0.3 * w_max
  moved = np.abs(np.sort(out)[: small.sum()] - s[small]) / s[small]
  assert np.all(moved <= 3 * a**2 * s[small] ** 4 + 1e-5)


def test_soft_cap_stacked_matches_per_matrix():
  w = np.stack([planted(np.linspace(0.1, 1.3, 32), seed=i) for i in range(3)])
  a = jnp.array([0.1, 0.2, 0.3])
  out = spectral.soft_cap(jnp.asarray(w, jnp.float32), a)
  for i in range(3):
    np.testing.assert_allclose(out[i], spectral.soft_cap(jnp.asarray(w[i], jnp.float32), a[i]),
                               atol=1e-6)


# --- hard cap, exact cap --------------------------------------------------------------

@pytest.mark.parametrize("w_max", [0.7, 2.0])
def test_hard_cap_bounded_up_to_3p5(w_max):
  s = np.linspace(0.0, 3.5 * w_max, 32)
  out = svals(spectral.hard_cap(jnp.asarray(planted(s), jnp.float32), w_max))
  assert out.max() <= 1.011 * w_max
  assert out.max() >= 0.95 * w_max  # it is a cap, not a shrink to zero
  assert abs(spectral.polynomial_sup(spectral.HARD_CAP_COEFFS, 3.5) - 1.0109) < 1e-4
  small = svals(spectral.hard_cap(jnp.asarray(planted(np.full(32, 1e-3)), jnp.float32), 1.0))
  np.testing.assert_allclose(small / 1e-3, 0.951, atol=1e-3)  # slope near zero


def test_exact_cap_is_min_sigma_wmax():
  s = np.linspace(0.05, 3.0, 32)
  w = planted(s)
  out = np.asarray(spectral.exact_cap(jnp.asarray(w, jnp.float32), 1.2), np.float64)
  u, _, vt = np.linalg.svd(w, full_matrices=False)
  expected = (u * np.minimum(np.linalg.svd(w, compute_uv=False), 1.2)) @ vt
  np.testing.assert_allclose(out, expected, atol=2e-5)


# --- power iteration, Newton-Schulz ---------------------------------------------------

def test_power_iteration_exact_with_gap_and_deterministic():
  s = np.concatenate([[2.0], np.linspace(0.1, 1.0, 31)])
  w = jnp.asarray(planted(s), jnp.float32)
  u, sigma, v = spectral.power_iteration(w, 30)
  np.testing.assert_allclose(float(sigma), 2.0, rtol=1e-5)
  uu, _, vvt = np.linalg.svd(np.asarray(w, np.float64))
  assert abs(abs(np.dot(uu[:, 0], u)) - 1) < 1e-5 and abs(abs(np.dot(vvt[0], v)) - 1) < 1e-5
  again = spectral.power_iteration(w, 30)[1]
  assert float(again) == float(sigma)
  stacked = spectral.power_iteration(jnp.stack([w, 0.5 * w]), 30)[1]
  np.testing.assert_allclose(stacked, [2.0, 1.0], rtol=1e-5)
  assert float(spectral.power_iteration(jnp.zeros((4, 3)), 5)[1]) == 0.0  # no NaN


@pytest.mark.parametrize("name,sup", [("keller", 1.2024), ("dion", 1.14502),
                                      ("six_step", 0.99933)])
def test_newton_schulz_matches_its_scalar_map(name, sup):
  assert abs(spectral.polynomial_sup(spectral.NS_COEFFS[name]) - sup) < 1e-4
  s = np.linspace(0.2, 1.0, 32)
  w = planted(s, 40, 32)
  out = np.sort(svals(spectral.newton_schulz_polar(jnp.asarray(w, jnp.float32), name)))
  x = s / np.linalg.norm(s)
  for a, b, c in spectral.NS_COEFFS[name]:
    x = a * x + b * x**3 + c * x**5
  np.testing.assert_allclose(out, np.sort(x), atol=2e-4)
  assert out.max() <= sup * (1 + 1e-4)


def test_six_step_polar_factor_close_to_uv():
  w = planted(np.linspace(0.5, 1.0, 16), 24, 16)
  out = np.asarray(spectral.newton_schulz_polar(jnp.asarray(w, jnp.float32), "six_step"))
  u, _, vt = np.linalg.svd(w, full_matrices=False)
  np.testing.assert_allclose(out, u @ vt, atol=0.02)
  with pytest.raises(ValueError, match="coeffs='nope'"):
    spectral.newton_schulz_polar(jnp.asarray(w), "nope")
