"""Projections, constrain(), Muon composition, the Lipschitz model variant and its
certified bound (transforms/lipschitz.py, model.py; arXiv 2507.13338)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts
from alphadecay_jax.transforms import lipschitz as lip
from conftest import read_metrics, run_python

HIDDEN = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down")
CFG = model_lib.ModelConfig(vocab_size=65, d_model=32, n_layers=2, n_heads=4,
                            n_kv_heads=4, d_ff=64, max_seq_len=64, lipschitz=True)


def planted(s, m, n, seed=0):
  rng = np.random.default_rng(seed)
  u = np.linalg.qr(rng.normal(size=(m, len(s))))[0]
  v = np.linalg.qr(rng.normal(size=(n, len(s))))[0]
  return (u * np.asarray(s, np.float64)) @ v.T


def rms_svals(w):
  """Singular values in RMS->RMS units of [..., fan_in, fan_out], float64, descending."""
  w = np.asarray(w, np.float64)
  return np.sqrt(w.shape[-2] / w.shape[-1]) * np.linalg.svd(w, compute_uv=False)


def tree_with(w):
  """A params tree: a stacked hidden kernel [2, 48, 32], an embed table and a norm."""
  return {"blocks": {"attn_q": jnp.asarray(w, jnp.float32),
                     "attn_norm": jnp.ones((2, 48), jnp.float32)},
          "embed": jnp.full((5, 48), 3.0, jnp.float32)}


# Planted RMS-unit spectra with a gap at the top: [2.0, then 0.1..1.0].
SPECTRUM = np.concatenate([[2.0], np.linspace(1.0, 0.1, 31)])  # descending
SCALE = np.sqrt(32 / 48)  # raw = RMS * sqrt(fan_out / fan_in)
W = np.stack([planted(SPECTRUM * SCALE, 48, 32, seed=i) for i in range(2)])


def _project(projection, w=W):
  out = jax.jit(projection)(tree_with(w), jnp.asarray(3))
  assert out["blocks"]["attn_norm"] is not None
  np.testing.assert_array_equal(out["blocks"]["attn_norm"], 1.0)  # untouched
  np.testing.assert_array_equal(out["embed"], 3.0)
  return rms_svals(out["blocks"]["attn_q"])


def test_normalize_and_hammer_exact_with_gap():
  out = _project(lip.spectral_normalize(1.5, num_iters=30))
  np.testing.assert_allclose(out, np.tile(SPECTRUM * 0.75, (2, 1)), rtol=1e-4)  # 2.0 -> 1.5
  out = _project(lip.spectral_hammer(1.5, num_iters=30))
  np.testing.assert_allclose(out[:, 0], 1.5, rtol=1e-4)
  np.testing.assert_allclose(out[:, 1:], SPECTRUM[None, 1:].repeat(2, 0), atol=1e-4)
  out = _project(lip.spectral_weight_decay(lambda t: 0.1 * t, num_iters=30))  # t = 3
  np.testing.assert_allclose(out[:, 0], 2.0 * 0.7, rtol=1e-4)
  # Below the cap, normalize is the identity.
  np.testing.assert_allclose(_project(lip.spectral_normalize(3.0)), np.tile(SPECTRUM, (2, 1)),
                             rtol=1e-5)


def test_caps_in_rms_units():
  out = _project(lip.spectral_exact_cap(1.2))
  np.testing.assert_allclose(out, np.minimum(SPECTRUM, 1.2)[None].repeat(2, 0), atol=1e-5)
  assert _project(lip.spectral_hard_cap(1.2)).max() <= 1.011 * 1.2
  # Soft cap: eta = 0.95 so k = 1.05 + 0.95 = 2.0 = the largest value (ratio 1.905 is
  # beyond 1.3065, fine here: only s = k matters for p(k) = w_max).
  out = _project(lip.spectral_soft_cap(1.05, 0.95))
  np.testing.assert_allclose(out[:, 0], 1.05, rtol=1e-4)


def test_embedding_rms_cap_rows():
  emb = jnp.asarray([[3.0] * 4, [0.5] * 4, [2.0, -2.0, 0.0, 0.0]], jnp.float32)
  out = lip.embedding_rms_cap(1.0)({"embed": emb, "head": emb}, 0)
  rms = np.sqrt(np.mean(np.asarray(out["embed"]) ** 2, axis=-1))
  np.testing.assert_allclose(rms, [1.0, 0.5, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(out["head"], emb)


def test_constrain_lands_on_projection_and_passes_extra_args():
  params = tree_with(W)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.1), params)
  proj = lip.spectral_exact_cap(1.0)
  tx = lip.constrain(optax.sgd(1.0), proj)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  expected = proj(jax.tree.map(lambda p, g: p - g, params, grads), 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new, expected)
  assert int(state.count) == 1
  seen = {}

  def inner_update(u, s, p=None, *, grad_fn=None):
    seen["grad_fn"] = grad_fn
    return u, s
  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), inner_update)
  lip.constrain(inner, proj).update(grads, lip.constrain(inner, proj).init(params), params,
                                    grad_fn="marker")
  assert seen["grad_fn"] == "marker"
  with pytest.raises(ValueError, match="needs params"):
    tx.update(grads, state)


def test_bound_hand_values():
  assert abs(model_lib.bound_at_caps(dataclasses.replace(CFG, n_layers=3), 1, 1)
             - 0.8758) < 5e-5
  assert abs(model_lib.bound_at_caps(dataclasses.replace(CFG, n_layers=12), 1, 1)
             - 0.8581) < 5e-5


def _random_lipschitz_params(cfg, seed=0):
  params = nnx.to_pure_dict(nnx.split(model_lib.Transformer(cfg, rngs=nnx.Rngs(seed)))[1])
  rng = np.random.default_rng(seed)
  for name in HIDDEN:  # zero-initialised ones become random too
    shape = params["blocks"][name].shape
    params["blocks"][name] = jnp.asarray(rng.normal(size=shape) * 0.1, jnp.float32)
  params["head"] = jnp.asarray(rng.normal(size=params["head"].shape) * 0.1, jnp.float32)
  params["embed"] = params["embed"] * jnp.asarray(rng.uniform(0.2, 1.3, (cfg.vocab_size, 1)),
                                                  jnp.float32)
  return params


def test_lipschitz_bound_matches_float64_recursion():
  cfg = dataclasses.replace(CFG, n_layers=3, softmax_scale=2.0)
  params = _random_lipschitz_params(cfg)
  norm = {k: [rms_svals(params["blocks"][k][l])[0] for l in range(3)] for k in HIDDEN}
  emb = np.asarray(params["embed"], np.float64)
  a = big_l = np.sqrt(np.mean(emb**2, -1)).max()
  al, s = 1 / 6, 2.0
  for l in range(3):
    q, k, v, o, up, down = (norm[n][l] for n in HIDDEN)
    big_l = (1 - al) * big_l + al * big_l * (s / 3 * o * (v + 2 * v * a**2 * q * k))
    big_l = (1 - al) * big_l + al * big_l * (down * up / 1.1289)
    a = (1 - al) * a + al * a * o * v / 3
    a = (1 - al) * a + al * a * down * up / 1.1289
  expected = big_l * rms_svals(params["head"])[0]
  got = float(jax.jit(functools.partial(model_lib.lipschitz_bound, cfg=cfg))(params))
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  with pytest.raises(ValueError, match="model.lipschitz=True"):
    model_lib.lipschitz_bound(params, dataclasses.replace(cfg, lipschitz=False))


def test_lipschitz_variant_model():
  params = nnx.to_pure_dict(nnx.split(model_lib.Transformer(CFG, rngs=nnx.Rngs(0)))[1])
  assert set(params) == {"embed", "blocks", "head"}
  assert set(params["blocks"]) == set(HIDDEN)
  assert sum(x.size for x in jax.tree.leaves(params)) == model_lib.param_count(CFG)["total"]
  for name in ("attn_q", "attn_k", "attn_v", "mlp_up"):  # orthogonal init at norm 1
    np.testing.assert_allclose(rms_svals(params["blocks"][name]), 1.0, atol=1e-5)
  # Zero output projections: every block is the identity, logits are 0.
  logits = model_lib.Transformer(CFG, rngs=nnx.Rngs(0))(jnp.zeros((2, 8), jnp.int32))
  np.testing.assert_array_equal(logits, 0.0)
  # With random weights: finite and causal.
  model = nnx.merge(nnx.split(model_lib.Transformer(CFG, rngs=nnx.Rngs(0)))[0],
                    _random_lipschitz_params(CFG))
  tokens = jnp.arange(16).reshape(2, 8)
  a, b = model(tokens), model(tokens.at[:, 5].set(40))
  assert np.isfinite(a).all()
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
  assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4


def test_muon_update_bound_holds():
  """The RMS->RMS norm of optax.contrib.muon's actual updates is <= muon_update_bound."""
  opt = optimizers.default_optimizer_config()
  opt.update(name="muon", learning_rate=0.05, schedule="constant", warmup_steps=0,
             grad_clip_norm=0.0)
  tx = optimizers.build_optimizer(opt, 10)
  rng = np.random.default_rng(0)
  params = {"blocks": {"mlp_up": jnp.zeros((2, 16, 64)), "mlp_down": jnp.zeros((2, 64, 16))},
            "embed": jnp.zeros((8, 16))}
  state = tx.init(params)
  bound = lip.muon_update_bound(0.05, "dion")
  for _ in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    updates, state = tx.update(grads, state, params)
    for name, (fi, fo) in (("mlp_up", (16, 64)), ("mlp_down", (64, 16))):
      top = rms_svals(updates["blocks"][name])[:, 0]
      eta = float(bound(0, fi, fo))
      assert np.all(top <= eta) and np.all(top >= 0.8 * eta), (name, top, eta)


def _lipschitz_run_config(projection=True):
  opt = optimizers.default_optimizer_config()
  opt.update(name="muon", learning_rate=0.15, schedule="constant", warmup_steps=0)
  opt.muon.update(adam_lr_scale=0.2)
  if projection:
    opt.lipschitz.update(projection="soft_cap", w_max=1.0, head_projection="exact_cap",
                         head_w_max=2.0, embed_max_rms=1.0)
  return opt


@pytest.mark.parametrize("projection", [True, False])
def test_constrained_training_keeps_every_cap(projection):
  """After every step every hidden matrix has ||W||_rms <= w_max (1 + 1e-3) by float64
  SVD and the certified bound stays under its target; without the projection the same
  run leaves the caps (so the check can fail)."""
  steps = 8
  opt = _lipschitz_run_config(projection)
  tx = optimizers.build_optimizer(opt, steps)
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  spec = ts.state_spec(CFG, tx, mesh)
  state = ts.create_state(spec, CFG, tx, 0)
  step_fn = ts.jit_train_step(spec, tx, mesh, 1, optimizers.make_schedule(opt, steps))
  target = model_lib.bound_at_caps(CFG, 1.0, 2.0, 1.0)
  tokens = np.random.default_rng(0).integers(0, 65, (8, 33)).astype(np.int32)
  batch = sharding_lib.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                                 sharding_lib.batch_sharding(mesh))
  worst, losses = 0.0, []
  for _ in range(steps):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["train/loss"]))
    params = jax.device_get(state.params)
    worst = max(worst, max(rms_svals(params["blocks"][n]).max() for n in HIDDEN))
    bound = model_lib.lipschitz_metrics(state.params, CFG)["lipschitz_bound"]
    if projection:
      assert worst <= 1.0 * (1 + 1e-3)
      assert bound <= target * (1 + 1e-3)
  assert losses[-1] < losses[0]
  if projection:
    assert worst > 0.9  # the caps were active
  else:
    assert worst > 1.05 and bound > target


def test_trainer_logs_bound_at_eval(tmp_path, tiny):
  config = tiny(**{"model.lipschitz": True, "model.softmax_scale": 1.0, "steps": 4,
                   "eval_every": 2, "checkpoint_every": 0, "optimizer.name": "muon",
                   "optimizer.learning_rate": 0.05, "optimizer.lipschitz.projection":
                   "soft_cap", "optimizer.lipschitz.head_w_max": 1.0})
  result = train_lib.train(config, str(tmp_path))
  records = read_metrics(tmp_path)
  assert "lipschitz_bound" in records[2] and "lipschitz_bound" in records[4]
  assert 0 < result.eval_metrics["lipschitz_bound"] <= model_lib.bound_at_caps(
      train_lib.model_config(config, 65), 1.0, 1.0, 1.0) * (1 + 1e-3)


@pytest.mark.parametrize("key,value,match", [
    ("lipschitz.projection", "spectral", "optimizer.lipschitz.projection='spectral'"),
    ("lipschitz.head_projection", "soft_cap", "head_projection='soft_cap'"),
    ("lipschitz.w_max", 0.0, "optimizer.lipschitz.w_max=0.0"),
    ("lipschitz.power_iters", 0, "power_iters=0"),
    ("muon.ns_coeffs", "keller", "optimizer.muon.ns_coeffs='keller'"),
])
def test_config_errors_name_key_and_value(key, value, match):
  opt = optimizers.default_optimizer_config()
  block, leaf = key.split(".")
  opt[block][leaf] = value
  with pytest.raises(ValueError, match=match.replace("(", r"\(")):
    optimizers.validate_optimizer_config(opt, 1000)


def test_soft_cap_config_needs_muon_and_a_small_rate():
  opt = optimizers.default_optimizer_config()
  opt.lipschitz.projection = "soft_cap"
  with pytest.raises(ValueError, match="needs optimizer.name='muon'"):
    optimizers.validate_optimizer_config(opt, 1000)
  opt.update(name="muon", learning_rate=0.5)
  with pytest.raises(ValueError, match="learning_rate=0.5"):
    optimizers.validate_optimizer_config(opt, 1000)
  opt.learning_rate = 0.1
  optimizers.validate_optimizer_config(opt, 1000)


@pytest.mark.slow
def test_projections_on_eight_devices_equal_one_device():
  code = r"""
import json, jax, jax.numpy as jnp, numpy as np
from alphadecay_jax import sharding as sh
from alphadecay_jax.transforms import lipschitz as lip
rng = np.random.default_rng(0)
# Hidden matrices near RMS norm 1 (inside the soft cap's range for eta = 0.25).
params = {"blocks": {"attn_q": jnp.asarray(rng.normal(size=(2, 64, 32)) * 0.07, jnp.float32),
                     "mlp_down": jnp.asarray(rng.normal(size=(2, 128, 64)) * 0.05, jnp.float32)},
          "embed": jnp.asarray(rng.normal(size=(16, 64)) * 3, jnp.float32),
          "head": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)}
projs = {"soft_cap": lip.spectral_soft_cap(1.0, 0.25), "hard_cap": lip.spectral_hard_cap(1.0),
         "normalize": lip.spectral_normalize(1.0), "hammer": lip.spectral_hammer(1.0),
         "exact_cap": lip.spectral_exact_cap(1.0), "embed": lip.embedding_rms_cap(1.0)}
mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
spread = jax.tree.map(lambda x: jax.device_put(x, shard), params)
one = jax.devices()[0]
out = {}
for name, p in projs.items():
  a = jax.jit(p)(spread, jnp.asarray(1))
  b = jax.jit(p)(jax.device_put(params, one), jnp.asarray(1))
  out[name] = max(float(np.abs(np.asarray(x) - np.asarray(y)).max() / np.abs(np.asarray(y)).max())
                  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  out[name + "_shards"] = len(jax.tree.leaves(a)[0].sharding.device_set)
print(json.dumps(out))
"""
  out = run_python(code, devices=8)
  for name in ("soft_cap", "hard_cap", "normalize", "hammer", "exact_cap", "embed"):
    assert out[name] <= 1e-5, (name, out[name])  # relative to the largest entry
    assert out[name + "_shards"] == 8
