"""spectral: ESD and Hill alpha against hand cases and a NumPy float64 SVD reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphadecay_jax import spectral

E = math.e


def np_alpha(w):
  """The reference: float64 SVD, median xmin, alpha = 1 + n / sum ln(lam / xmin)."""
  lam = np.sort(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False) ** 2)
  i = len(lam) // 2
  return 1.0 + (len(lam) - i) / np.sum(np.log(lam[i:] / lam[i]))


def test_hand_cases():
  np.testing.assert_allclose(spectral.hill_alpha(jnp.array([1.0, 2.0, E, E ** 2])), 3.0,
                             rtol=1e-6)
  np.testing.assert_allclose(spectral.hill_alpha(jnp.array([1.0, 1, 1, E, E ** 3])), 1.75,
                             rtol=1e-6)


def _matrices(rng):
  gaussian = rng.standard_normal((256, 256))
  wide = rng.standard_normal((96, 256))
  student = rng.standard_t(1, (256, 192))
  student3 = rng.standard_t(3, (200, 120))
  u, v = rng.standard_normal((256, 4)), rng.standard_normal((4, 128))
  spiked = rng.standard_normal((256, 128)) + 3.0 * (u @ v) / 2.0
  return {"gaussian": gaussian, "wide": wide, "student_t1": student,
          "student_t3": student3, "spiked": spiked}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_matches_numpy_float64_svd(seed):
  for name, w in _matrices(np.random.default_rng(seed)).items():
    w32 = w.astype(np.float32)
    fit = spectral.fit_tail(spectral.esd(w32))
    assert bool(fit.valid), name
    np.testing.assert_allclose(fit.alpha, np_alpha(w32), rtol=1e-4, err_msg=name)


def test_alpha_invariant_to_scale_and_transpose():
  w = np.random.default_rng(3).standard_normal((300, 120)).astype(np.float32)
  base = float(spectral.hill_alpha(spectral.esd(w)))
  for variant in (w * 1e-3, w * 50.0, w.T, (7.0 * w).T):
    np.testing.assert_allclose(spectral.hill_alpha(spectral.esd(variant)), base, rtol=1e-4)


def test_gaussian_alpha_depends_on_aspect_ratio_as_published():
  rng = np.random.default_rng(4)
  square = [float(spectral.hill_alpha(spectral.esd(rng.standard_normal((512, 512)))))
            for _ in range(3)]
  mlp = [float(spectral.hill_alpha(spectral.esd(rng.standard_normal((512, 1376)))))
         for _ in range(3)]
  assert abs(np.mean(square) - 2.12) < 0.03, square
  assert abs(np.mean(mlp) - 2.99) < 0.03, mlp
  heavy = float(spectral.hill_alpha(spectral.esd(rng.standard_t(1, (512, 512)))))
  assert 1.3 < heavy < 1.6


def test_stacked_input_gives_one_alpha_per_matrix_equal_to_each_slice():
  w = np.random.default_rng(5).standard_normal((3, 2, 64, 40)).astype(np.float32)
  alpha_of = jax.jit(lambda x: spectral.hill_alpha(spectral.esd(x)))
  stacked = alpha_of(w)
  assert stacked.shape == (3, 2)
  for i in range(3):
    for j in range(2):
      np.testing.assert_allclose(stacked[i, j], alpha_of(w[i, j]), rtol=1e-6)


@pytest.mark.parametrize("name,w", [
    ("zeros", np.zeros((16, 8))),
    ("rank_one", np.outer(np.arange(1.0, 17.0), np.ones(8))),
    ("nan", np.full((16, 8), np.nan)),
    ("inf", np.where(np.eye(16, 8) > 0, np.inf, 1.0)),
    ("identity", np.eye(8)),
])
def test_degenerate_matrices_are_finite_and_flagged(name, w):
  for xmin in spectral.XMIN_MODES:
    fit = spectral.fit_tail(spectral.esd(w.astype(np.float32)), xmin)
    assert np.isfinite(fit.alpha) and not bool(fit.valid), (name, xmin)
  stats = spectral.spectral_stats(w.astype(np.float32))
  assert all(np.all(np.isfinite(x)) for x in stats)


def test_ks_xmin_fits_heavy_tails_and_matches_a_numpy_search():
  rng = np.random.default_rng(6)
  w = rng.standard_t(2, (128, 96)).astype(np.float32)
  fit = spectral.fit_tail(spectral.esd(w, method="svd"), "ks")
  lam = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)
  best = (np.inf, None)
  for k in range(len(lam) - 1):
    tail = lam[k:]
    alpha = 1 + len(tail) / np.sum(np.log(tail / lam[k]))
    cdf = 1 - (tail / lam[k]) ** (1 - alpha)
    emp = np.arange(1, len(tail) + 1) / len(tail)
    dist = np.max(np.abs(emp - cdf))
    best = min(best, (dist, alpha), key=lambda b: b[0])
  np.testing.assert_allclose(fit.alpha, best[1], rtol=1e-3)


def test_esd_methods_agree_and_norms_match_numpy():
  w = np.random.default_rng(7).standard_normal((2, 50, 30)).astype(np.float32)
  gram, svd = spectral.esd(w, "gram"), spectral.esd(w, "svd")
  np.testing.assert_allclose(gram, svd, rtol=1e-4, atol=1e-4)
  s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
  np.testing.assert_allclose(spectral.spectral_norm(w), s[:, 0], rtol=1e-5)
  np.testing.assert_allclose(spectral.frobenius_norm(w), np.sqrt((s ** 2).sum(-1)), rtol=1e-5)
  np.testing.assert_allclose(spectral.stable_rank(w), (s ** 2).sum(-1) / s[:, 0] ** 2,
                             rtol=1e-4)
  assert jax.jit(spectral.esd)(w).shape == (2, 30)


@pytest.mark.parametrize("method", spectral.ESD_METHODS)
def test_esd_many_batches_by_gram_size_and_equals_per_matrix_esd(method):
  rng = np.random.default_rng(8)
  ws = [rng.standard_normal(s).astype(np.float32) for s in
        [(3, 40, 24), (24, 40), (2, 24, 56), (40, 40), (5, 7)]]
  ws[1][0, 0] = np.nan
  many = jax.jit(lambda xs: spectral.esd_many(xs, method))(ws)
  for w, e in zip(ws, many):
    assert e.shape == w.shape[:-2] + (min(w.shape[-2:]),)
    np.testing.assert_allclose(e, spectral.esd(w, method), rtol=1e-5, atol=1e-4)
  assert np.all(np.isnan(many[1]))
