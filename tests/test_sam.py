"""LightSAM / SAM / ASAM: NumPy float64 references, radius law, NaN safety, no params copy,
train-step integration (guard, accumulation, config) and 8 vs 1 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts
from alphadecay_jax.transforms import sam as sam_lib
from conftest import read_metrics, run_python

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(8, 5)), RNG.normal(size=(8, 3))
INIT = {"w": RNG.normal(size=(5, 3)), "b": RNG.normal(size=(3,))}


def _loss(p, x, y):  # log-cosh regression: smooth and not quadratic, so g_t != s_t + const
  return jnp.sum(jnp.log(jnp.cosh(x @ p["w"] + p["b"] - y))) / x.shape[0]


def _np_grad(p):  # analytic, independent of autodiff
  r = np.tanh(X @ p["w"] + p["b"] - Y) / X.shape[0]
  return {"w": X.T @ r, "b": r.sum(0)}


def _np_lightsam(variant, lr, rho, steps, b1=0.9, b2=0.999, eps=1e-8):
  """REFERENCES.md section 2 in float64 (adagrad / adam: the inferred forms)."""
  p = {k: v.copy() for k, v in INIT.items()}
  sq = lambda t: sum(float(np.sum(v * v)) for v in t.values())
  u = eps ** 2 if variant == "adagrad_norm" else {k: np.full(v.shape, eps ** 2) for k, v in p.items()}
  v = eps ** 2 if variant == "adagrad_norm" else {k: np.full(x.shape, eps ** 2) for k, x in p.items()}
  if variant == "adam":
    u = {k: np.zeros(x.shape) for k, x in p.items()}
    m = {k: np.zeros(x.shape) for k, x in p.items()}
    v = {k: np.zeros(x.shape) for k, x in p.items()}
  trajectory, radii, step_sizes = [], [], []
  for t in range(1, steps + 1):
    s = _np_grad(p)
    if variant == "adagrad_norm":
      u = u + sq(s)
      e = {k: rho * s[k] / np.sqrt(u) for k in p}
    elif variant == "adagrad":
      u = {k: u[k] + s[k] ** 2 for k in p}
      e = {k: rho * s[k] / np.sqrt(u[k]) for k in p}
    else:
      u = {k: b2 * u[k] + (1 - b2) * s[k] ** 2 for k in p}
      e = {k: rho * s[k] / (np.sqrt(u[k] / (1 - b2 ** t)) + eps) for k in p}
    g = _np_grad({k: p[k] + e[k] for k in p})
    if variant == "adagrad_norm":
      v = v + sq(g)
      d = {k: -lr * g[k] / np.sqrt(v) for k in p}
    elif variant == "adagrad":
      v = {k: v[k] + g[k] ** 2 for k in p}
      d = {k: -lr * g[k] / np.sqrt(v[k]) for k in p}
    else:
      m = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}
      v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in p}
      d = {k: -lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps) for k in p}
    p = {k: p[k] + d[k] for k in p}
    trajectory.append(p)
    radii.append(np.sqrt(sq(e)))
    step_sizes.append(np.sqrt(sq(d)) / np.sqrt(sq(g)))
  return trajectory, radii, step_sizes


def _run(tx, steps, dtype=jnp.float64, loss=_loss):
  x, y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
  params = {k: jnp.asarray(v, dtype) for k, v in INIT.items()}
  grad_fn = jax.grad(lambda p: loss(p, x, y))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  state, out = tx.init(params), []
  for _ in range(steps):
    params, state = step(params, state)
    out.append((params, state))
  return out


@pytest.mark.parametrize("variant,lr,rho", [("adagrad_norm", 0.5, 0.3), ("adagrad_norm", 0.5, 0.0),
                                            ("adagrad", 0.2, 0.05), ("adam", 0.05, 0.01)])
def test_matches_numpy_float64_over_20_steps(variant, lr, rho):
  """rho = 0 is plain AdaGrad-Norm (the reference then never perturbs)."""
  ref, radii, step_sizes = _np_lightsam(variant, lr, rho, 20)
  with jax.enable_x64(True):
    out = _run(sam_lib.lightsam(lr, rho, variant), 20)
  for (params, state), want, radius, step_size in zip(out, ref, radii, step_sizes):
    for k in want:
      np.testing.assert_allclose(params[k], want[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.radius, radius, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(state.step_size, step_size, rtol=1e-6)
  assert abs(float(out[-1][0]["b"][0]) - INIT["b"][0]) > 1e-3  # it did move


def test_float32_tracks_float64_reference():
  ref, _, _ = _np_lightsam("adagrad_norm", 0.5, 0.3, 20)
  params, _ = _run(sam_lib.lightsam(0.5, 0.3), 20, dtype=jnp.float32)[-1]
  for k in ref[-1]:
    np.testing.assert_allclose(params[k], ref[-1][k], rtol=1e-5, atol=1e-5)


def test_radius_is_rho_at_step_one_then_shrinks_like_inverse_sqrt_t():
  c = {"w": jnp.asarray(RNG.normal(size=(5, 3))), "b": jnp.asarray(RNG.normal(size=(3,)))}
  linear = lambda p, x, y: sum(jnp.sum(c[k] * p[k]) for k in c)  # constant gradient c
  norm_c = float(optax.tree.norm(c))
  rho, lr = 0.2, 0.1
  with jax.enable_x64(True):
    out = _run(sam_lib.lightsam(lr, rho), 20, loss=linear)
  radius = np.array([float(s.radius) for _, s in out])
  step = np.array([float(s.step_size) for _, s in out])
  t = np.arange(1, 21)
  assert abs(radius[0] - rho) < 1e-6
  np.testing.assert_allclose(radius * np.sqrt(t), rho, rtol=1e-6)
  np.testing.assert_allclose(step * np.sqrt(t) * norm_c, lr, rtol=1e-6)
  metrics = optimizers.state_metrics(out[0][1])
  assert set(metrics) == {"sam/radius", "sam/step_size", "sam/perturbed_grad_norm"}


def test_sam_and_asam_perturbations_match_their_formulas():
  s_np = {k: RNG.normal(size=v.shape) for k, v in INIT.items()}
  flat = lambda t: np.concatenate([np.ravel(t["b"]), np.ravel(t["w"])])
  with jax.enable_x64(True):
    s = {k: jnp.asarray(v) for k, v in s_np.items()}
    p = {k: jnp.asarray(v) for k, v in INIT.items()}
    e_sam, _ = sam_lib.sam(0.3).update(s, sam_lib.sam(0.3).init(p), p)
    tx = sam_lib.asam(0.3, eta=0.01)
    e_asam, _ = tx.update(s, tx.init(p), p)
  sv, tv = flat(s_np), np.abs(flat(INIT)) + 0.01
  np.testing.assert_allclose(flat(e_sam), 0.3 * sv / np.linalg.norm(sv), rtol=1e-12)
  np.testing.assert_allclose(flat(e_asam), 0.3 * tv ** 2 * sv / np.linalg.norm(tv * sv),
                             rtol=1e-12)


PERTURBATIONS = {"lightsam_adagrad_norm": lambda: sam_lib.adaptive_perturbation(0.1),
                 "lightsam_adagrad": lambda: sam_lib.adaptive_perturbation(0.1, "adagrad"),
                 "lightsam_adam": lambda: sam_lib.adaptive_perturbation(0.1, "adam"),
                 "sam": lambda: sam_lib.sam(0.1), "asam": lambda: sam_lib.asam(0.1)}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_zero_gradient_gives_zero_update_and_finite_state(name):
  zero = lambda p: jax.tree.map(jnp.zeros_like, p)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in INIT.items()}
  for base in (optax.adam(1e-3), sam_lib.adaptive_descent(1.0)):  # adam: no decay term
    tx = sam_lib.sam_wrap(base, PERTURBATIONS[name]())
    state = tx.init(params)
    for _ in range(2):
      updates, state = tx.update(zero(params), state, params, grad_fn=zero)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_optax_contrib_sam_is_nan_on_a_zero_gradient_where_ours_is_not():
  """The anchor's fault (REFERENCES.md section 2), so the test above could fail."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in INIT.items()}
  tx = optax.contrib.sam(optax.sgd(0.1), optax.chain(optax.contrib.normalize(), optax.sgd(0.1)))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert np.isnan(np.asarray(updates["w"])).all()


def test_nonfinite_perturbation_crosses_into_the_update_and_is_not_blended():
  nan_pert = optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda g, s, p=None: (jax.tree.map(lambda x: x * jnp.nan, g), s))
  params = {k: jnp.asarray(v, jnp.float32) for k, v in INIT.items()}
  grad_fn = jax.grad(lambda p: _loss(p, jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)))
  tx = sam_lib.sam_wrap(optax.adamw(1e-3), nan_pert)
  updates, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
  assert np.isnan(np.asarray(optax.tree.norm(updates)))


def test_no_copy_of_the_params_in_the_state():
  params = {k: jnp.asarray(v, jnp.float32) for k, v in INIT.items()}
  param_bytes = optimizers.state_bytes(params)
  light = sam_lib.lightsam(0.1, 0.05).init(params)
  assert all(np.ndim(x) == 0 for x in jax.tree.leaves(light))  # AdaGrad-Norm: scalars only
  for pert in PERTURBATIONS.values():
    wrapped = optimizers.state_bytes(sam_lib.sam_wrap(optax.adamw(1e-3), pert()).init(params))
    inner = optimizers.state_bytes(optax.adamw(1e-3).init(params))
    inner += optimizers.state_bytes(pert().init(params))
    assert wrapped - inner <= 16  # only the three float32 diagnostics
  anchor = optax.contrib.sam(optax.adamw(1e-3), optax.contrib.normalize())
  assert optimizers.state_bytes(anchor.init(params)) >= (
      optimizers.state_bytes(optax.adamw(1e-3).init(params)) + param_bytes)


def _tiny_step(config, accum_steps=1, tx=None):
  mesh = sharding_lib.make_mesh(config.mesh)
  model_cfg = train_lib.model_config(config, 80)
  tx = tx or optimizers.build_optimizer(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  state = ts.create_state(spec, model_cfg, tx, seed=0)
  step = ts.jit_train_step(spec, tx, mesh, accum_steps,
                           optimizers.make_schedule(config.optimizer, config.steps))
  tokens = np.random.default_rng(0).integers(0, 80, (8, 33)).astype(np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  return state, step, batch


def test_train_step_guard_skips_a_nonfinite_second_gradient(tiny):
  """First loss and gradient are finite; only the perturbed point is NaN."""
  nan_pert = optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda g, s, p=None: (jax.tree.map(lambda x: x * jnp.nan, g), s))
  tx = sam_lib.sam_wrap(sam_lib.adaptive_descent(1.0), nan_pert)
  state, step, batch = _tiny_step(tiny(), tx=tx)
  before = jax.device_get(state)
  after, metrics = step(state, batch)
  assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["train/grad_norm"])
  assert int(metrics["train/update_skipped"]) == 1
  for x, y in zip(jax.tree.leaves(before[1:3]), jax.tree.leaves(after[1:3]), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_lightsam_accumulation_uses_the_same_micro_batches(tiny):
  results = []
  for accum in (1, 2):
    state, step, batch = _tiny_step(tiny(**{"optimizer.name": "lightsam",
                                            "optimizer.sam.rho": 0.5}), accum)
    results.append(step(state, batch))
  (s1, m1), (s4, m4) = results  # s4: the two-micro-batch run
  np.testing.assert_allclose(m1["sam/radius"], m4["sam/radius"], rtol=1e-5)
  np.testing.assert_allclose(m1["sam/perturbed_grad_norm"], m4["sam/perturbed_grad_norm"],
                             rtol=1e-5)
  assert float(m1["sam/perturbed_grad_norm"]) != pytest.approx(float(m1["train/grad_norm"]))
  for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer.sam.variant": "rmsprop"}, "optimizer.sam.variant='rmsprop'"),
    ({"optimizer.name": "sam", "optimizer.sam.base": "lightsam"}, "optimizer.sam.base='lightsam'"),
    ({"optimizer.sam.rho": -0.1}, "optimizer.sam.rho=-0.1 must be >= 0"),
    ({"optimizer.sam.perturbation.kind": "gsam"}, "optimizer.sam.perturbation.kind='gsam'"),
    ({"optimizer.name": "asam", "optimizer.sam.perturbation.kind": "sam"}, "non-SAM"),
])
def test_bad_sam_config_is_rejected_with_a_clear_message(tiny, overrides, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    optimizers.build_optimizer(tiny(**overrides).optimizer, 20)


@pytest.mark.parametrize("overrides", [
    {"optimizer.name": "lightsam", "optimizer.learning_rate": 1.0},
    {"optimizer.sam.perturbation.kind": "lightsam", "optimizer.sam.perturbation.rho": 0.5},
])
def test_trains_and_logs_radius_and_step_size(tmp_path, tiny, overrides):
  train_lib.train(tiny(steps=12, eval_every=12, checkpoint_every=0, **overrides), str(tmp_path))
  metrics = read_metrics(tmp_path)
  assert metrics[12]["train/loss"] < metrics[1]["train/loss"]
  assert all(metrics[s]["sam/radius"] > 0 for s in range(1, 13))
  # Warmup starts at learning rate 0: step 1 takes no step, later steps do.
  assert metrics[1]["sam/step_size"] == 0 and all(metrics[s]["sam/step_size"] > 0
                                                   for s in range(2, 13))


@pytest.mark.slow
def test_eight_devices_match_one_device():
  out = run_python("""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np, tempfile
from conftest import load, read_metrics
from alphadecay_jax import train as train_lib
out = {}
for name, mesh in [("one", dict(data=1, fsdp=1, tensor=1)), ("fsdp8", dict(data=1, fsdp=8, tensor=1)),
                   ("mixed", dict(data=2, fsdp=2, tensor=2))]:
  config = load("tiny", steps=5, eval_every=5, checkpoint_every=0, grad_accum_steps=2,
                batch_size=16,
                **{"optimizer.name": "lightsam", "optimizer.learning_rate": 1.0,
                   "optimizer.sam.rho": 0.5})
  config.mesh.update(mesh)
  with tempfile.TemporaryDirectory() as tmp:
    result = train_lib.train(config, tmp)
    m = read_metrics(tmp)
  out[name] = {"loss": [m[s]["train/loss"] for s in range(1, 6)],
               "radius": [m[s]["sam/radius"] for s in range(1, 6)],
               "step_size": [m[s]["sam/step_size"] for s in range(1, 6)],
               "params": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(result.state.params)],
               "devices": len(result.state.params["embed"].sharding.device_set)}
print(json.dumps(out))
""", devices=8)
  assert (out["one"]["devices"], out["fsdp8"]["devices"], out["mixed"]["devices"]) == (1, 8, 8)
  for name in ("fsdp8", "mixed"):
    for key in ("loss", "radius", "step_size"):
      np.testing.assert_allclose(out[name][key], out["one"][key], rtol=1e-5, atol=1e-6)
    for x, y in zip(out[name]["params"], out["one"]["params"], strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_composes_with_inject_hyperparams_and_chain():
  plain = _run(sam_lib.lightsam(0.5, 0.3), 3, dtype=jnp.float32)[-1][0]
  injected = optax.inject_hyperparams(sam_lib.lightsam)(learning_rate=0.5, rho=0.3)
  chained = optax.chain(optax.identity(), injected)  # chain forwards grad_fn
  for k, v in _run(chained, 3, dtype=jnp.float32)[-1][0].items():
    np.testing.assert_allclose(v, plain[k], rtol=1e-6)
