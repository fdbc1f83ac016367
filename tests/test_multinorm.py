"""Gradient multi-normalisation (SinkGD, SWAN-style; arXiv 2502.06742) vs NumPy float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alphadecay_jax import labels
from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import train as train_lib
from alphadecay_jax.transforms import alpha_decay
from alphadecay_jax.transforms import multinorm as mn
from conftest import load, read_metrics, run_python

SHAPES = [(7, 5), (5, 7), (16, 16), (3, 12, 20), (2, 3, 8, 6)]


def _np_sinkgd(g: np.ndarray, num_iters: int) -> np.ndarray:
  """The paper's alternating scheme, float64, one matrix at a time over leading axes."""
  g = np.asarray(g, np.float64)
  out = np.empty_like(g)
  for idx in np.ndindex(*g.shape[:-2]):
    x = g[idx].copy()
    m, n = x.shape
    for _ in range(num_iters):
      x = np.sqrt(n) * x / np.linalg.norm(x, axis=1, keepdims=True)
      x = np.sqrt(m) * x / np.linalg.norm(x, axis=0, keepdims=True)
    out[idx] = x
  return out


def _update(tx, grads, params=None):
  return jax.jit(tx.update)(grads, tx.init(grads if params is None else params), params)[0]


def _rand(shape, seed=0, scale=1.0):
  return scale * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("num_iters", [1, 5])
def test_matches_numpy_float64_alternating_scheme(num_iters):
  grads = {f"g{i}": _rand(s, i, scale=10.0 ** -i) for i, s in enumerate(SHAPES)}
  out = _update(mn.scale_by_multi_normalization(num_iters=num_iters), grads)
  for key, g in grads.items():
    np.testing.assert_allclose(out[key], _np_sinkgd(g, num_iters), rtol=1e-5, atol=1e-5,
                               err_msg=key)


def test_columns_exact_rms_one_and_rows_converge_with_iterations():
  g = {"w": _rand((4, 48, 24), 3) * np.geomspace(0.01, 10, 24).astype(np.float32)}
  row_err = []
  for num_iters in (1, 2, 4, 8, 16):
    u = np.asarray(_update(mn.scale_by_multi_normalization(num_iters=num_iters), g)["w"],
                   np.float64)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), np.sqrt(48), rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.mean(u ** 2, axis=(1, 2))), 1.0, rtol=1e-5)
    row_err.append(np.abs(np.linalg.norm(u, axis=2) / np.sqrt(24) - 1).max())
  assert all(b < 0.5 * a for a, b in zip(row_err[:3], row_err[1:4])), row_err
  assert row_err[0] > 1e-2 and row_err[-1] < 1e-5, row_err


def test_zero_rows_columns_and_gradients_give_zeros_not_nan():
  g = _rand((6, 5), 1)
  g[2] = 0.0
  g[:, 3] = 0.0
  tiny = _rand((6, 5), 2, scale=1e-30)
  grads = {"g": g, "zero": np.zeros((2, 4, 3), np.float32), "tiny": tiny,
           "bf16": jnp.asarray(g, jnp.bfloat16)}
  # Row standardisation subtracts the row mean, so only SinkGD keeps zero columns zero.
  for normalizers, zero_column in [((mn.row_l2, mn.column_l2), True),
                                   ((mn.row_standardize, mn.newton_schulz_whitening()), False)]:
    out = _update(mn.scale_by_multi_normalization(normalizers), grads)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(out))
    assert not np.asarray(out["g"])[2].any() and np.asarray(out["g"]).any()
    assert (not np.asarray(out["g"])[:, 3].any()) == zero_column
    assert not np.asarray(out["zero"]).any() and out["bf16"].dtype == jnp.bfloat16
  sink = _update(mn.scale_by_multi_normalization(), {"a": tiny, "b": tiny * 1e30})
  np.testing.assert_allclose(sink["a"], sink["b"], rtol=1e-5)  # scale invariant
  assert np.abs(np.asarray(sink["a"])).max() > 0.1


def test_sinkgd_fast_path_equals_the_explicit_alternation():
  """SinkGD's normalisers run in diagonal-scaling form; wrapping them in lambdas takes
  the generic path (explicit row / column passes), which must give the same matrix."""
  explicit = (lambda g, e: mn.row_l2(g, e), lambda g, e: mn.column_l2(g, e))
  g = _rand((9, 7), 5)
  g[1] = 0.0                     # dead row
  g[4] *= 1e-6                   # rows / columns spanning six decades
  g[:, 2] *= 1e3
  for x in (g, g.T, _rand((16, 40), 6)):
    for num_iters in (1, 5):
      fast = mn.multi_normalize(jnp.asarray(x), (mn.row_l2, mn.column_l2), num_iters, 1e-8)
      slow = mn.multi_normalize(jnp.asarray(x), explicit, num_iters, 1e-8)
      np.testing.assert_allclose(fast, slow, rtol=2e-5, atol=1e-6)


def test_row_standardize_and_newton_schulz_whitening_vs_numpy():
  g = _rand((9, 13), 4)
  np.testing.assert_allclose(mn.row_standardize(jnp.asarray(g), 1e-8),
                             (g - g.mean(1, keepdims=True)) / g.std(1, keepdims=True),
                             rtol=1e-5, atol=1e-5)
  for shape in [(12, 20), (20, 12)]:  # wide, and tall (whitened through the transpose)
    u, _, vt = np.linalg.svd(_rand(shape, 5), full_matrices=False)
    x = u @ np.diag(np.linspace(0.3, 2.0, min(shape))) @ vt  # condition number 6.7
    exact = np.sqrt(max(shape)) * u @ vt
    cubic = mn.newton_schulz_whitening(40, mn.CUBIC_NS_COEFFS)(jnp.asarray(x, jnp.float32),
                                                               1e-8)
    np.testing.assert_allclose(cubic, exact, atol=1e-4)
    quintic = mn.newton_schulz_whitening()(jnp.asarray(x, jnp.float32), 1e-8)
    s = np.linalg.svd(np.asarray(quintic, np.float64), compute_uv=False) / np.sqrt(max(shape))
    assert 0.6 < s.min() and s.max() < 1.25, s
  with pytest.raises(ValueError, match="num_steps"):
    mn.newton_schulz_whitening(0)


def test_custom_normalizer_and_vectors_pass_through():
  frobenius = lambda g, eps: g * np.sqrt(g.size) / jnp.maximum(jnp.linalg.norm(g), eps)
  grads = {"w": _rand((2, 6, 4), 6), "b": _rand((4,), 7)}
  out = _update(mn.scale_by_multi_normalization((frobenius,), num_iters=2), grads)
  w = np.asarray(grads["w"], np.float64)
  np.testing.assert_allclose(out["w"], w / np.sqrt((w ** 2).mean(axis=(1, 2), keepdims=True)),
                             rtol=1e-5)
  np.testing.assert_array_equal(out["b"], grads["b"])
  for bad in [dict(num_iters=0), dict(normalizers=()), dict(eps=0.0)]:
    with pytest.raises(ValueError):
      mn.scale_by_multi_normalization(**bad)


def _model_params(name="default"):
  config = load(name)
  cfg = train_lib.model_config(config, 65)
  abstract = nnx.eval_shape(lambda: model_lib.Transformer(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.split(abstract)[1])


def test_matrix_leaves_hold_zero_state_bytes():
  params = _model_params()
  assert jax.tree.leaves(mn.scale_by_multi_normalization().init(params)) == []
  hidden = labels.hidden_matrix_mask(params)
  rest = sum(x.size * 4 for x, h in zip(jax.tree.leaves(params), jax.tree.leaves(hidden))
             if not h)
  hidden_shapes = {x.shape for x, h in zip(jax.tree.leaves(params), jax.tree.leaves(hidden))
                   if h}
  for name, tx in [("sinkgd", mn.sinkgd(1e-3)), ("swan", mn.swan(1e-3))]:
    state = jax.eval_shape(tx.init, params)
    # Adam's mu and nu for the non-hidden leaves, plus int32 step counters only.
    assert 0 <= optimizers.state_bytes(state) - 2 * rest <= 64, name
    assert not hidden_shapes & {x.shape for x in jax.tree.leaves(state)}, name


def test_sinkgd_wiring_equals_normalised_step_and_adamw_for_the_rest():
  params = {"blocks": {"attn_q": _rand((2, 8, 8), 1), "mlp_down": _rand((2, 12, 8), 2),
                       "attn_norm": _rand((2, 8), 3)},
            "embed": _rand((20, 8), 4), "head": _rand((8, 20), 5)}
  grads = jax.tree.map(lambda x: _rand(x.shape, 9), params)
  lr, wd = 0.1, 0.3
  out = _update(mn.sinkgd(lr, weight_decay=wd, adam_learning_rate=0.01), grads, params)
  for key in ("attn_q", "mlp_down"):
    p, g = params["blocks"][key], grads["blocks"][key]
    np.testing.assert_allclose(out["blocks"][key], -lr * (_np_sinkgd(g, 5) + wd * p),
                               rtol=1e-5, atol=1e-6)
  # First Adam step: m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps); decay on the head only
  # (not on the embedding, nor on the stacked [layers, d] norm scales).
  for path, decayed in [(("embed",), False), (("head",), True),
                        (("blocks", "attn_norm"), False)]:
    p, g, u = params, grads, out
    for k in path:
      p, g, u = p[k], g[k], u[k]
    np.testing.assert_allclose(u, -0.01 * (g / (np.abs(g) + 1e-8) + wd * p * decayed),
                               rtol=1e-5, atol=1e-7, err_msg=str(path))


def _np_hill_alpha(w: np.ndarray) -> float:
  """Median-xmin Hill exponent of W's squared singular values (NumPy float64)."""
  lam = np.sort(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False) ** 2)
  i = len(lam) // 2
  return 1.0 + (len(lam) - i) / float(np.sum(np.log(lam[i:] / lam[i])))


def test_composes_with_alpha_decay_and_clipping():
  """optax.chain(SinkGD, AlphaDecay's decoupled decay, lr) for the stacked hidden matrix,
  AdamW for the embedding, all after global-norm clipping; checked against NumPy."""
  rng = np.random.default_rng(4)
  # Three layers from light- to heavy-tailed, so the decays spread over s_range.
  up = np.stack([rng.standard_normal((24, 40)), rng.standard_t(3, (24, 40)),
                 rng.standard_t(1.5, (24, 40))]).astype(np.float32)
  params = {"blocks": {"mlp_up": up}, "embed": _rand((10, 6), 2)}
  grads = jax.tree.map(lambda x: _rand(x.shape, 3), params)
  wd, s_range, lr = 0.05, (0.5, 2.0), 0.1
  matrix = optax.chain(mn.scale_by_multi_normalization(),
                       alpha_decay.add_alpha_decayed_weights(wd, s_range, refresh_every=1),
                       optax.scale_by_learning_rate(lr))
  tx = optax.chain(optax.clip_by_global_norm(0.5), optax.multi_transform(
      {"m": matrix, "a": optax.adamw(0.01)}, lambda p: {"blocks": {"mlp_up": "m"},
                                                         "embed": "a"}))
  out = _update(tx, grads, params)

  alphas = np.asarray([_np_hill_alpha(w) for w in up])
  scale = s_range[0] + (s_range[1] - s_range[0]) * (alphas - alphas.min()) / np.ptp(alphas)
  assert np.ptp(scale) > 1.0  # the layers really do get different decays
  clipped = {k: np.asarray(g) * 0.5 / float(optax.tree.norm(grads))
             for k, g in (("up", grads["blocks"]["mlp_up"]), ("embed", grads["embed"]))}
  # SinkGD is scale-invariant, so clipping leaves the matrix direction unchanged.
  expected = -lr * (_np_sinkgd(clipped["up"], 5) + wd * scale[:, None, None] * up)
  np.testing.assert_allclose(out["blocks"]["mlp_up"], expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      out["embed"], -0.01 * (clipped["embed"] / (np.abs(clipped["embed"]) + 1e-8)
                             + 1e-4 * params["embed"]), rtol=1e-5, atol=1e-7)


def test_config_errors_name_the_key():
  for key, value in [("optimizer.sinkgd.num_iters", 0), ("optimizer.sinkgd.eps", 0.0),
                     ("optimizer.swan.ns_steps", 0), ("optimizer.swan.matrix_lr_scale", -1.0)]:
    name = key.split(".")[1]
    config = load("tiny", **{"optimizer.name": name, key: value})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
      optimizers.build_optimizer(config.optimizer, config.steps)


@pytest.mark.parametrize("name", ["sinkgd", "swan"])
def test_trainer_learns_and_logs_small_state(tiny, tmp_path, name):
  config = tiny(**{"optimizer.name": name, "steps": 12, "eval_every": 12,
                   "checkpoint_every": 0})
  train_lib.train(config, str(tmp_path))
  metrics = read_metrics(tmp_path)
  losses = [metrics[s]["train/loss"] for s in sorted(metrics) if s > 0]
  assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.3, losses
  params = _model_params("tiny")
  adamw_bytes = optimizers.state_bytes(jax.eval_shape(optax.adamw(1e-3).init, params))
  assert metrics[0]["optimizer_state_bytes"] < 0.4 * adamw_bytes


@pytest.mark.slow
def test_eight_device_sharded_updates_equal_one_device():
  out = run_python("""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import load
from alphadecay_jax import optimizers, sharding as sharding_lib, train as train_lib
from alphadecay_jax import train_state as ts
result = {}
for name in ("sinkgd", "swan"):
  config = load("tiny", **{"optimizer.name": name})
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=4, tensor=2))
  spec = ts.state_spec(train_lib.model_config(config, 65), tx, mesh)
  shapes = spec.abstract.params
  rng = np.random.default_rng(0)
  make = lambda: jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), shapes)
  params, grads = make(), [make(), make()]
  def run(put, init_out):
    p = put(params, spec.shardings.params)
    state = jax.jit(tx.init, out_shardings=init_out)(p)
    outs = []
    for g in grads:
      u, state = jax.jit(tx.update)(put(g, spec.shardings.params), state, p)
      outs.append(u)
    return outs
  one = run(lambda t, s: jax.device_put(t, jax.devices()[0]), None)
  eight = run(jax.device_put, spec.shardings.opt_state)
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for x, y in zip(one, eight) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  q = eight[-1]["blocks"]["attn_q"]
  result[name] = dict(diff=diff, devices=len(q.sharding.device_set),
                      same_spec=q.sharding.spec == spec.shardings.params["blocks"]["attn_q"].spec)
print(json.dumps(result))
""", devices=8)
  for name in ("sinkgd", "swan"):
    assert out[name]["devices"] == 8 and out[name]["same_spec"], out
    assert out[name]["diff"] < 1e-5, out
