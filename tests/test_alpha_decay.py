"""AlphaDecay transform and its AWD / AdaDecay baselines."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alphadecay_jax import labels
from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import spectral
from alphadecay_jax.transforms import alpha_decay as ad
from alphadecay_jax.transforms import decay_baselines as baselines
from conftest import ROOT, load, read_metrics, run_python

sys.path.insert(0, str(ROOT / "benchmarks"))
import plot_alphas  # noqa: E402

CFG = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4,
                            n_kv_heads=2, d_ff=64, max_seq_len=64)
MASK = optimizers.decay_mask(False)


def _params(seed=0):
  model = model_lib.Transformer(CFG, rngs=nnx.Rngs(params=jax.random.PRNGKey(seed)))
  return nnx.to_pure_dict(nnx.split(model)[1])


def _grads(params, seed):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_map_hand_check_and_equal_alphas():
  alphas = {"a": jnp.array([2.0, 3.0, 4.0])}
  valid = {"a": jnp.array([True, True, True])}
  tuned = {"a": np.array([True, True, True])}
  scale = ad.alpha_to_scale(alphas, valid, tuned, (0.6666, 3.0))
  np.testing.assert_allclose(1e-5 * np.asarray(scale["a"]), [6.666e-6, 1.8333e-5, 3e-5],
                             rtol=1e-4)
  same = ad.alpha_to_scale({"a": jnp.full(3, 2.5)}, valid, tuned, (0.6666, 3.0))
  np.testing.assert_allclose(same["a"], [3.0, 3.0, 3.0])
  # Untuned or unfittable modules keep the base decay and do not move the range.
  mixed = ad.alpha_to_scale({"a": jnp.array([2.0, 9.0, 4.0, 3.0])},
                            {"a": jnp.array([True, True, False, True])},
                            {"a": np.array([True, False, True, True])}, (0.5, 2.0))
  np.testing.assert_allclose(mixed["a"], [0.5, 1.0, 1.0, 2.0])


def test_forced_equal_decay_is_exactly_optax_adamw_over_many_steps():
  params = _params()
  ours = ad.alphadecay_adamw(1e-2, weight_decay=0.1, mask=MASK, s_range=(1.0, 1.0),
                             refresh_every=3)
  ref = optax.adamw(1e-2, weight_decay=0.1, mask=MASK)
  step = jax.jit(lambda tx_state, ref_state, p, g: (ours.update(g, tx_state, p),
                                                    ref.update(g, ref_state, p)))
  s1, s2, p1, p2 = ours.init(params), ref.init(params), params, params
  for t in range(12):
    g = _grads(params, t)
    (u1, s1), (u2, s2) = step(s1, s2, p1, g)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(a, b)
  # The bare transform with equal decays is optax.add_decayed_weights.
  tx = ad.add_alpha_decayed_weights(0.3, s_range=(1.0, 1.0), mask=MASK)
  u, _ = tx.update(_grads(params, 99), tx.init(params), params)
  r, _ = optax.add_decayed_weights(0.3, mask=MASK).update(
      _grads(params, 99), optax.add_decayed_weights(0.3, mask=MASK).init(params), params)
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r)):
    np.testing.assert_array_equal(a, b)


def test_refresh_happens_exactly_every_k_steps_and_state_is_frozen_between():
  params = _params()
  tx = ad.add_alpha_decayed_weights(1e-2, refresh_every=4, mask=MASK)
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(0)
  seen = []
  for t in range(10):
    # New weights every step, so a refresh is visible as a change of alpha.
    p = jax.tree.map(lambda x: x * (1.0 + 0.5 * rng.random()) + 0.05 * rng.standard_normal(
        x.shape).astype(np.float32), params)
    before = state.alpha
    _, state = update(_grads(params, t), state, p)
    changed = not all(np.array_equal(a, b) for a, b in
                      zip(jax.tree.leaves(before), jax.tree.leaves(state.alpha)))
    seen.append(changed)
    if t % 4 == 0:  # the refresh used exactly these weights
      np.testing.assert_allclose(
          state.alpha["blocks"]["mlp_up"],
          spectral.hill_alpha(spectral.esd(p["blocks"]["mlp_up"])), rtol=1e-6)
  assert seen == [t % 4 == 0 for t in range(10)]


def test_per_layer_alphas_and_the_decay_actually_applied():
  params = _params(1)
  tx = ad.add_alpha_decayed_weights(0.5, s_range=(0.5, 2.0), mask=MASK)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, state = jax.jit(tx.update)(zeros, tx.init(params), params)
  for name in labels.HIDDEN:
    w = params["blocks"][name]
    assert state.alpha[name and "blocks"][name].shape == (CFG.n_layers,)
    for layer in range(CFG.n_layers):
      np.testing.assert_allclose(state.alpha["blocks"][name][layer],
                                 spectral.hill_alpha(spectral.esd(w[layer])), rtol=1e-5)
  # NumPy recomputation of the whole map over the 20 tuned modules (3 x 7 - layer-0 q).
  names = [(n, l) for n in labels.HIDDEN for l in range(3) if (n, l) != ("attn_q", 0)]
  alphas = np.array([float(state.alpha["blocks"][n][l]) for n, l in names])
  lo, hi = alphas.min(), alphas.max()
  for (n, l), a in zip(names, alphas):
    want = 0.5 * (0.5 + 1.5 * (a - lo) / (hi - lo)) * params["blocks"][n][l]
    np.testing.assert_allclose(updates["blocks"][n][l], want, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(updates["blocks"]["attn_q"][0], 0.5 * params["blocks"]["attn_q"][0])
  np.testing.assert_allclose(updates["head"], 0.5 * params["head"])
  assert not np.any(updates["embed"]) and not np.any(updates["final_norm"])


def test_degenerate_weights_never_give_nan_or_negative_decay():
  params = _params()
  params["blocks"]["attn_v"] = params["blocks"]["attn_v"].at[0].set(0.0)
  params["blocks"]["mlp_up"] = params["blocks"]["mlp_up"].at[1].set(
      jnp.outer(jnp.arange(32.0), jnp.ones(64)))
  params["blocks"]["mlp_down"] = params["blocks"]["mlp_down"].at[2, 0, 0].set(jnp.nan)
  tx = ad.add_alpha_decayed_weights(1e-2, mask=MASK)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  for tree in (state.alpha, state.scale):
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))
  assert all(np.all(np.asarray(x) > 0) for x in jax.tree.leaves(state.scale))
  assert not state.valid["blocks"]["attn_v"][0] and not state.valid["blocks"]["mlp_up"][1]
  assert float(state.scale["blocks"]["attn_v"][0]) == 1.0


def test_weight_decay_schedule_and_inject_hyperparams():
  params = _params()
  sched = optax.linear_schedule(0.2, 0.0, 10)
  tx = ad.add_alpha_decayed_weights(sched, s_range=(1.0, 1.0), mask=MASK)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for t in range(3):
    u, state = tx.update(zeros, state, params)
    np.testing.assert_allclose(u["head"], float(sched(t)) * params["head"], rtol=1e-6)
  # Callables other than schedules must be declared static, as for optax's own masks.
  injected = optax.inject_hyperparams(ad.add_alpha_decayed_weights, static_args=("mask",))(
      weight_decay=0.1, s_range=(1.0, 1.0), mask=MASK)
  state = injected.init(params)
  state.hyperparams["weight_decay"] = jnp.asarray(0.05)
  u, _ = jax.jit(injected.update)(zeros, state, params)
  np.testing.assert_allclose(u["head"], 0.05 * params["head"], rtol=1e-6)


def test_awd_matches_numpy_reference():
  params = _params()
  tx = optax.chain(baselines.awd(optax.identity(), 0.3, coupled=False, mask=MASK))
  state = tx.init(params)
  lam_bar = 0.0
  for t in range(4):
    g = _grads(params, t)
    u, state = tx.update(g, state, params)
    gn = math.sqrt(sum(float(np.sum(np.square(np.float64(x)))) for x in jax.tree.leaves(g)))
    wn = math.sqrt(sum(float(np.sum(np.square(np.float64(x)))) for x in jax.tree.leaves(params)))
    lam_bar = 0.1 * lam_bar + 0.9 * 0.3 * gn / (wn + 1e-8)
    # atol: float32 rounding of O(1) gradient entries where g and lam W nearly cancel.
    np.testing.assert_allclose(u["head"], g["head"] + lam_bar * params["head"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(u["final_norm"], g["final_norm"], rtol=1e-6)
  assert optimizers.state_metrics(state)["awd/lambda_bar"] == pytest.approx(lam_bar, rel=1e-5)


def test_adadecay_module_and_parameter_rules_match_numpy():
  params = _params()
  g = _grads(params, 5)
  tx = baselines.adadecay(optax.identity(), 0.1, alpha=4.0, granularity="module",
                          coupled=False, mask=MASK)
  u, state = tx.update(g, tx.init(params), params)
  layer = 1
  norms = {n: float(np.linalg.norm(np.float64(g["blocks"][n][layer]))) for n in labels.HIDDEN}
  vals = np.array(list(norms.values()))
  z = (vals - vals.mean()) / (vals.std() + 1e-8)
  theta = dict(zip(norms, 2 / (1 + np.exp(-4.0 * z))))
  for n in labels.HIDDEN:
    np.testing.assert_allclose(state.theta["blocks"][n][layer], theta[n], rtol=1e-4)
    np.testing.assert_allclose(u["blocks"][n][layer], g["blocks"][n][layer] + 0.1 * theta[n]
                               * params["blocks"][n][layer], rtol=1e-4, atol=1e-7)
  tx = baselines.adadecay(optax.identity(), 0.1, granularity="parameter", coupled=False,
                          mask=MASK)
  u, _ = tx.update(g, tx.init(params), params)
  a = np.abs(np.float64(g["head"]))
  theta = 2 / (1 + np.exp(-4.0 * (a - a.mean()) / (a.std() + 1e-8)))
  np.testing.assert_allclose(u["head"], g["head"] + 0.1 * theta * params["head"], rtol=1e-4,
                             atol=1e-7)


@pytest.mark.parametrize("name", ["alphadecay_adamw", "alphadecay_adam_l2", "awd", "adadecay"])
def test_trainer_runs_each_name_and_logs_alphas(tmp_path, name):
  config = load("tiny", steps=6, eval_every=6, checkpoint_every=3,
                **{"optimizer.name": name, "optimizer.weight_decay": 0.1,
                   "optimizer.alpha_decay.refresh_every": 2})
  from alphadecay_jax import train as train_lib
  result = train_lib.train(config, str(tmp_path))
  assert np.isfinite(result.eval_metrics["eval/loss"])
  metrics = read_metrics(tmp_path)
  if name.startswith("alphadecay"):
    alphas = metrics[6]["alpha_decay/alpha/blocks.mlp_up"]
    assert len(alphas) == 2 and all(1.0 < a < 10.0 for a in alphas)
    assert metrics[6]["alpha_decay/scale/blocks.attn_q"][0] == 1.0  # layer-0 q untuned
    figure = plot_alphas.plot(str(tmp_path))
    assert os.path.getsize(figure) > 10_000


@pytest.mark.slow
def test_eight_devices_give_the_one_device_alphas_and_updates():
  out = run_python("""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from alphadecay_jax import optimizers, sharding, train as train_lib, train_state as ts
from conftest import load
config = load("tiny", **{"optimizer.name": "alphadecay_adamw", "optimizer.weight_decay": 0.1})
results = {}
for name, fsdp in (("one", 1), ("eight", 8)):
  config.mesh.fsdp = fsdp
  mesh = sharding.make_mesh(config.mesh)
  model_cfg = train_lib.model_config(config, 80)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  state = ts.create_state(spec, model_cfg, tx, seed=0)
  step = ts.jit_train_step(spec, tx, mesh, 1, optimizers.make_schedule(config.optimizer, 20))
  batch = {"inputs": np.arange(8 * 32).reshape(8, 32) % 80,
           "targets": (np.arange(8 * 32).reshape(8, 32) + 1) % 80}
  batch = sharding.put_batch({k: v.astype(np.int32) for k, v in batch.items()},
                             sharding.batch_sharding(mesh))
  for _ in range(3):
    state, metrics = step(state, batch)
  results[name] = dict(
      alpha=np.asarray(metrics["alpha_decay/alpha/blocks.mlp_down"]).tolist(),
      q=np.asarray(state.params["blocks"]["attn_q"]).ravel()[:64].tolist(),
      devices=len(state.params["blocks"]["attn_q"].sharding.device_set))
print(json.dumps(results))
""", devices=8)
  assert out["one"]["devices"] == 1 and out["eight"]["devices"] == 8
  np.testing.assert_allclose(out["eight"]["alpha"], out["one"]["alpha"], rtol=1e-5)
  np.testing.assert_allclose(out["eight"]["q"], out["one"]["q"], rtol=1e-5, atol=1e-7)


def test_composes_with_lightsam_and_a_lipschitz_projection_under_jit():
  from alphadecay_jax.transforms import lipschitz, sam
  params = _params()
  loss = lambda p: sum(jnp.sum(jnp.square(x - 0.01)) for x in jax.tree.leaves(p))
  tx = sam.sam_wrap(
      lipschitz.constrain(ad.alphadecay_adamw(1e-2, weight_decay=0.1, mask=MASK),
                          lipschitz.spectral_hard_cap(w_max=0.5)),
      sam.adaptive_perturbation(rho=0.05, variant="adagrad_norm"))
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, grad_fn=jax.grad(loss)))
  state = tx.init(params)
  for _ in range(3):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  metrics = optimizers.state_metrics(state)  # nested states report too
  assert metrics["alpha_decay/alpha/blocks.mlp_up"].shape == (CFG.n_layers,)
  assert float(metrics["sam/radius"]) > 0
  w = np.asarray(params["blocks"]["mlp_up"], np.float64)
  rms_norm = np.sqrt(w.shape[-2] / w.shape[-1]) * np.linalg.svd(w, compute_uv=False)[:, 0]
  assert np.all(rms_norm <= 0.5 * 1.011), rms_norm
