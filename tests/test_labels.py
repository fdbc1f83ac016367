"""labels: roles from paths, matrix views, and the AlphaDecay tuned-module mask."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from alphadecay_jax import labels
from alphadecay_jax import model as model_lib
from alphadecay_jax import presets


def _abstract_params(cfg):
  abstract = nnx.eval_shape(lambda: model_lib.Transformer(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.split(abstract)[1])


def _llama(size):
  d, f, h, layers, _ = presets.LLAMA_SIZES[size]
  return model_lib.ModelConfig(vocab_size=32000, d_model=d, n_layers=layers, n_heads=h,
                               n_kv_heads=h, d_ff=f, max_seq_len=256)


def test_roles_of_our_model_and_common_aliases():
  roles = labels.param_roles(_abstract_params(_llama("60m")))
  assert roles["blocks"]["attn_q"] == "attn_q" and roles["blocks"]["mlp_down"] == "mlp_down"
  assert roles["blocks"]["attn_norm"] == "norm" and roles["final_norm"] == "norm"
  assert roles["embed"] == "embed" and roles["head"] == "head"
  hf = {"model": {"layers_0": {"self_attn": {"q_proj": {"kernel": 0}},
                               "mlp": {"down_proj": {"kernel": 0}},
                               "input_layernorm": {"scale": 0}},
                  "embed_tokens": {"embedding": 0}},
        "lm_head": {"kernel": 0}, "something": {"kernel": 0}}
  r = labels.param_roles(hf)
  assert r["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"] == "attn_q"
  assert r["model"]["layers_0"]["mlp"]["down_proj"]["kernel"] == "mlp_down"
  assert r["model"]["layers_0"]["input_layernorm"]["scale"] == "norm"
  assert r["model"]["embed_tokens"]["embedding"] == "embed"
  assert r["lm_head"]["kernel"] == "head" and r["something"]["kernel"] == "other"


def test_60m_has_55_tuned_modules_as_in_the_paper():
  mask = labels.tuned_module_mask(_abstract_params(_llama("60m")))
  assert labels.count_modules(mask) == 8 * 7 - 1 == 55
  assert mask["blocks"]["attn_q"].tolist() == [False] + [True] * 7
  assert mask["blocks"]["mlp_up"].shape == (8,) and mask["blocks"]["mlp_up"].all()
  assert not mask["head"] and not mask["embed"] and not mask["final_norm"]


def test_matrix_view_round_trips_and_merges_head_axes():
  x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
  view = labels.MatrixView(x.shape, fan_in_axes=(1,), fan_out_axes=(2, 3))
  m = view.to_matrices(x)
  assert m.shape == (2, 3, 20) and view.stacked_shape == (2,)
  np.testing.assert_array_equal(view.from_matrices(m), x)
  transposed = labels.MatrixView(x.shape, fan_in_axes=(3,), fan_out_axes=(1,))
  mt = transposed.to_matrices(x)
  assert mt.shape == (2, 4, 5, 3)
  np.testing.assert_array_equal(mt[1, 2], np.asarray(x)[1, :, 2, :].T)
  np.testing.assert_array_equal(transposed.from_matrices(mt), x)
  default = labels.default_view(jnp.zeros((7, 3, 5)))
  assert default.stacked_shape == (7,) and default.matrix_shape == (3, 5)
  assert labels.default_view(jnp.zeros((5,))) is None


def test_hidden_matrix_mask():
  mask = labels.hidden_matrix_mask(_abstract_params(_llama("60m")))
  assert mask["blocks"]["attn_v"] and mask["blocks"]["mlp_gate"]
  assert not mask["blocks"]["attn_norm"] and not mask["embed"] and not mask["head"]
