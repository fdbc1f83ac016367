"""optimizers: decay mask, schedule, and the adamw / adam_l2 chains against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphadecay_jax import optimizers


def _params():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return {"blocks": {"attn_norm": f(2, 4), "attn_q": f(2, 4, 4)}, "embed": f(8, 4),
          "head": f(4, 8), "final_norm": f(4)}


def test_decay_mask_spares_norms_including_stacked_ones_and_the_embedding():
  mask = optimizers.decay_mask(False)(_params())
  assert mask == {"blocks": {"attn_norm": False, "attn_q": True}, "embed": False,
                  "head": True, "final_norm": False}
  assert optimizers.decay_mask(True)(_params())["embed"] is True


def test_schedule_warmup_cosine_floor():
  opt = optimizers.default_optimizer_config()
  opt.update(learning_rate=1e-2, warmup_steps=10, min_lr_ratio=0.1)
  sched = optimizers.make_schedule(opt, 110)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110)],
                             [0.0, 5e-3, 1e-2, 0.55e-2, 1e-3], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["adamw", "adam_l2"])
def test_chains_match_numpy_float64(name):
  opt = optimizers.default_optimizer_config()
  opt.update(name=name, learning_rate=1e-2, schedule="constant", warmup_steps=0,
             weight_decay=0.1, grad_clip_norm=0.0, b1=0.9, b2=0.99, eps=1e-8)
  tx = optimizers.build_optimizer(opt, 100)
  params = _params()
  state = tx.init(params)
  mask = optimizers.decay_mask(False)(params)
  p_np = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  m = jax.tree.map(np.zeros_like, p_np)
  v = jax.tree.map(np.zeros_like, p_np)
  rng = np.random.default_rng(1)
  for t in range(1, 6):
    g = jax.tree.map(lambda x: rng.standard_normal(x.shape), p_np)
    updates, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g),
                               state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)

    def step(p, gi, mi, vi, decayed):
      wd = 0.1 if decayed else 0.0
      gi = gi + wd * p if name == "adam_l2" else gi
      mi = 0.9 * mi + 0.1 * gi
      vi = 0.99 * vi + 0.01 * gi * gi
      d = (mi / (1 - 0.9 ** t)) / (np.sqrt(vi / (1 - 0.99 ** t)) + 1e-8)
      d = d + wd * p if name == "adamw" else d
      return p - 1e-2 * d, mi, vi

    out = jax.tree.map(step, p_np, g, m, v, mask)
    is_triple = lambda x: isinstance(x, tuple)
    p_np = jax.tree.map(lambda o: o[0], out, is_leaf=is_triple)
    m = jax.tree.map(lambda o: o[1], out, is_leaf=is_triple)
    v = jax.tree.map(lambda o: o[2], out, is_leaf=is_triple)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_np)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
