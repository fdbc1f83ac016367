"""Model: analytic parameter counts, a NumPy float64 forward reference, causality."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alphadecay_jax import labels
from alphadecay_jax import metrics
from alphadecay_jax import model as model_lib
from alphadecay_jax import presets

TINY = model_lib.ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4,
                             n_kv_heads=2, d_ff=48, max_seq_len=64)


def _params(cfg, seed=0):
  model = model_lib.Transformer(cfg, rngs=nnx.Rngs(params=jax.random.PRNGKey(seed)))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size", sorted(presets.LLAMA_SIZES))
def test_param_count_matches_analytic_llama_family(size):
  d, f, h, layers, _ = presets.LLAMA_SIZES[size]
  cfg = model_lib.ModelConfig(vocab_size=presets.T5_VOCAB_SIZE, d_model=d, n_layers=layers,
                              n_heads=h, n_kv_heads=h, d_ff=f, max_seq_len=256)
  abstract = nnx.eval_shape(lambda: model_lib.Transformer(cfg, rngs=nnx.Rngs(0)))
  counted = _count(nnx.to_pure_dict(nnx.split(abstract)[1]))
  assert counted == model_lib.param_count(cfg)["total"]
  # Independent hand formula for MHA + SwiGLU + untied head, no biases.
  hand = 2 * 32000 * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
  assert counted == hand
  nominal = {"60m": 58e6, "135m": 134e6, "350m": 368e6, "1b": 1.34e9}[size]
  assert abs(counted - nominal) / nominal < 0.03


def test_param_count_gqa_tiny():
  _, _, params = _params(TINY)
  assert _count(params) == model_lib.param_count(TINY)["total"]
  assert params["blocks"]["attn_k"].shape == (2, 32, 2 * 8)


def _np_forward(p, tokens, cfg):
  """Float64 NumPy reference of the decoder, written from the equations."""
  f = lambda x: np.asarray(x, np.float64)
  B, T = tokens.shape
  N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  def norm(x, s):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * f(s)
  half = H // 2
  inv = cfg.rope_theta ** (-np.arange(half) / half)
  ang = np.arange(T)[:, None] * inv[None]
  cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
  def rope(x):
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)
  x = f(p["embed"])[tokens]
  blk = p["blocks"]
  for l in range(cfg.n_layers):
    h = norm(x, blk["attn_norm"][l])
    q = rope((h @ f(blk["attn_q"][l])).reshape(B, T, N, H))
    k = rope((h @ f(blk["attn_k"][l])).reshape(B, T, K, H))
    v = (h @ f(blk["attn_v"][l])).reshape(B, T, K, H)
    k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", a, v).reshape(B, T, N * H)
    x = x + o @ f(blk["attn_o"][l])
    h = norm(x, blk["mlp_norm"][l])
    g, u = h @ f(blk["mlp_gate"][l]), h @ f(blk["mlp_up"][l])
    x = x + (g / (1 + np.exp(-g)) * u) @ f(blk["mlp_down"][l])
  return norm(x, p["final_norm"]) @ f(p["head"])


def test_forward_matches_numpy_float64_reference():
  cfg = model_lib.ModelConfig(**{**TINY.__dict__, "init_std": 0.2})
  model, _, params = _params(cfg, seed=1)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 11))
  got = np.asarray(model(jnp.asarray(tokens)))
  want = _np_forward(jax.device_get(params), tokens, cfg)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_causality_loss_at_t_has_zero_gradient_wrt_later_tokens(remat):
  cfg = model_lib.ModelConfig(**{**TINY.__dict__, "remat": remat})
  model, graphdef, params = _params(cfg)
  T, t = 12, 5
  x = jax.random.normal(jax.random.PRNGKey(3), (1, T, cfg.d_model))

  def loss_at_t(x_BTD):
    logits = nnx.merge(graphdef, params).logits_from_embeddings(x_BTD)
    return jax.nn.logsumexp(logits[0, t]) - logits[0, t, 3]

  grad = np.asarray(jax.grad(loss_at_t)(x))[0]
  per_position = np.abs(grad).sum(-1)
  assert np.all(per_position[t + 1:] == 0.0)
  assert np.all(per_position[: t + 1] > 0.0)  # and it does depend on the past


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = model_lib.ModelConfig(**{**TINY.__dict__, "compute_dtype": "bfloat16"})
  model, _, params = _params(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = model(jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.float32
  ref = model_lib.Transformer(TINY, rngs=nnx.Rngs(params=jax.random.PRNGKey(0)))(
      jnp.zeros((1, 8), jnp.int32))
  np.testing.assert_allclose(logits, ref, atol=5e-2)


@pytest.mark.parametrize("key,value,match", [
    ("n_heads", 5, "divisible"), ("n_kv_heads", 3, "grouped-query"),
    ("compute_dtype", "fp8", "compute_dtype"), ("remat", "some", "remat"),
    ("d_model", 0, "d_model")])
def test_model_config_errors_name_the_key(key, value, match):
  cfg = model_lib.ModelConfig(**{**TINY.__dict__, key: value})
  with pytest.raises(ValueError, match=match):
    model_lib.validate_model_config(cfg)


@pytest.mark.parametrize("lipschitz", [False, True])
def test_flops_per_token_counts_every_matrix_parameter_once(lipschitz):
  """6 x (params of the real model's matrices, embedding excluded) + attention."""
  cfg = model_lib.ModelConfig(**{**TINY.__dict__, "lipschitz": lipschitz})
  params = nnx.state(model_lib.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  matrices = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                 if labels.role_of(path) not in ("embed", "norm"))
  seq_len = 16
  attention = 6 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
  assert metrics.flops_per_token(cfg, seq_len) == 6.0 * matrices + attention
