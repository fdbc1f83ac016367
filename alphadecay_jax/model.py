"""LLaMA-style decoder in Flax NNX.

Token embedding, rotary position embedding (RoPE), RMSNorm, grouped-query attention
through `jax.nn.dot_product_attention`, SwiGLU MLP, untied output head, no biases.

The transformer blocks are stored *stacked*: every block parameter carries a leading
`layers` axis and the forward pass is one `jax.lax.scan`, so compile time does not grow
with depth. Kernels are (fan_in, fan_out) per layer, so a stacked kernel is
[layers, fan_in, fan_out] and spectral code sees one matrix per layer.

Every parameter is annotated with its logical axes in the `logical_axes` metadata
(`sharding.py` maps them to mesh axes); activations are pinned to the batch sharding
when traced under a mesh. We use our own metadata key rather than flax's
`out_sharding` so that flax never shards eagerly behind our back: the trainer creates
state already sharded with `jax.jit(..., out_shardings=...)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alphadecay_jax import sharding as sharding_lib

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyperparameters (a hashable mirror of `config.model`)."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  max_seq_len: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02
  compute_dtype: str = "float32"
  remat: str = "none"

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def dtype(self) -> Any:
    return _DTYPES[self.compute_dtype]

  @classmethod
  def from_config(cls, cfg: Any, vocab_size: int | None = None) -> "ModelConfig":
    """Builds from an ml_collections `config.model` block (extra keys ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in dict(cfg).items() if k in names}
    if vocab_size is not None:
      kwargs["vocab_size"] = vocab_size
    return cls(**kwargs)


def validate_model_config(cfg: ModelConfig) -> None:
  """Raises ValueError naming the key, value and what is allowed."""
  for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
              "max_seq_len"):
    value = getattr(cfg, key)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"model.{key}={value!r} must be a positive integer")
  if cfg.d_model % cfg.n_heads:
    raise ValueError(f"model.d_model={cfg.d_model} must be divisible by "
                     f"model.n_heads={cfg.n_heads}")
  if cfg.n_heads % cfg.n_kv_heads:
    raise ValueError(f"model.n_heads={cfg.n_heads} must be divisible by "
                     f"model.n_kv_heads={cfg.n_kv_heads} (grouped-query attention)")
  if cfg.head_dim % 2:
    raise ValueError(f"model head_dim={cfg.head_dim} (d_model / n_heads) must be even "
                     "for RoPE")
  if cfg.compute_dtype not in _DTYPES:
    raise ValueError(f"model.compute_dtype={cfg.compute_dtype!r} is not one of "
                     f"{tuple(_DTYPES)}")
  if cfg.remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={cfg.remat!r} is not one of {REMAT_POLICIES}")


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
           std: float | None) -> nnx.Param:
  """A float32 parameter: normal(0, std), or ones when std is None (norm scales)."""
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  else:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, logical_axes=axes)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
  """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale).astype(x.dtype)


def rope(x_BTNH: Array, positions_T: Array, theta: float) -> Array:
  """Rotary embedding, rotate-half convention: pairs (i, i + H/2) rotate by pos * theta^(-2i/H)."""
  half = x_BTNH.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_TH = positions_T[:, None].astype(jnp.float32) * freq[None, :]
  sin, cos = jnp.sin(angle_TH)[None, :, None, :], jnp.cos(angle_TH)[None, :, None, :]
  x1, x2 = x_BTNH[..., :half].astype(jnp.float32), x_BTNH[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


class Blocks(nnx.Module):
  """All transformer blocks, parameters stacked along a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    L, D, F, H = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.head_dim
    q_dim, kv_dim, std = cfg.n_heads * H, cfg.n_kv_heads * H, cfg.init_std
    self.cfg = cfg
    self.attn_norm = _param(rngs, (L, D), ("layers", "norm"), None)
    self.attn_q = _param(rngs, (L, D, q_dim), ("layers", "embed", "heads"), std)
    self.attn_k = _param(rngs, (L, D, kv_dim), ("layers", "embed", "kv_heads"), std)
    self.attn_v = _param(rngs, (L, D, kv_dim), ("layers", "embed", "kv_heads"), std)
    self.attn_o = _param(rngs, (L, q_dim, D), ("layers", "heads", "embed"), std)
    self.mlp_norm = _param(rngs, (L, D), ("layers", "norm"), None)
    self.mlp_gate = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), std)
    self.mlp_up = _param(rngs, (L, D, F), ("layers", "embed", "mlp"), std)
    self.mlp_down = _param(rngs, (L, F, D), ("layers", "mlp", "embed"), std)

  def __call__(self, x_BTD: Array, positions_T: Array) -> Array:
    graphdef, state = nnx.split(self)
    cfg = self.cfg

    def one_layer(x: Array, layer_state: Any) -> tuple[Array, None]:
      x = nnx.merge(graphdef, layer_state)._layer(x, positions_T)
      return sharding_lib.constrain_batch(x), None

    if cfg.remat == "full":
      one_layer = jax.checkpoint(one_layer, prevent_cse=False)
    elif cfg.remat == "dots":
      one_layer = jax.checkpoint(
          one_layer, prevent_cse=False,
          policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    x_BTD, _ = jax.lax.scan(one_layer, x_BTD, state)
    return x_BTD

  def _layer(self, x_BTD: Array, positions_T: Array) -> Array:
    """One pre-norm block; called on a single layer's slice of the stacked params."""
    cfg, dt = self.cfg, self.cfg.dtype
    B, T, _ = x_BTD.shape
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    # Projections run on [B*T, D] rows: with 3-D activations XLA:CPU transposes their
    # gradients through strided copies (~20% of a 10M-param step).
    h_ND = rms_norm(x_BTD, self.attn_norm[...], cfg.norm_eps).reshape(B * T, -1)
    q_BTNH = (h_ND @ self.attn_q[...].astype(dt)).reshape(B, T, N, H)
    k_BTKH = (h_ND @ self.attn_k[...].astype(dt)).reshape(B, T, K, H)
    v_BTKH = (h_ND @ self.attn_v[...].astype(dt)).reshape(B, T, K, H)
    q_BTNH = rope(q_BTNH, positions_T, cfg.rope_theta)
    k_BTKH = rope(k_BTKH, positions_T, cfg.rope_theta)
    # Handles grouped-query attention natively (N a multiple of K) with a 1/sqrt(H) scale.
    o_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, is_causal=True)
    attn_ND = o_BTNH.reshape(B * T, N * H) @ self.attn_o[...].astype(dt)
    x_BTD = x_BTD + attn_ND.reshape(x_BTD.shape)

    h_ND = rms_norm(x_BTD, self.mlp_norm[...], cfg.norm_eps).reshape(B * T, -1)
    gate_NF = h_ND @ self.mlp_gate[...].astype(dt)
    up_NF = h_ND @ self.mlp_up[...].astype(dt)
    mlp_ND = (jax.nn.silu(gate_NF) * up_NF) @ self.mlp_down[...].astype(dt)
    return x_BTD + mlp_ND.reshape(x_BTD.shape)


class Transformer(nnx.Module):
  """Decoder-only LM: embed -> stacked blocks -> RMSNorm -> untied head (float32 logits)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                        cfg.init_std)
    self.blocks = Blocks(cfg, rngs=rngs)
    self.final_norm = _param(rngs, (cfg.d_model,), ("norm",), None)
    self.head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                       cfg.init_std)

  def __call__(self, tokens_BT: Array) -> Array:
    x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0)
    return self.logits_from_embeddings(x_BTD)

  def logits_from_embeddings(self, x_BTD: Array) -> Array:
    """Everything after the embedding lookup (tests differentiate through this)."""
    cfg = self.cfg
    positions_T = jnp.arange(x_BTD.shape[1])
    x_BTD = sharding_lib.constrain_batch(x_BTD.astype(cfg.dtype))
    x_BTD = self.blocks(x_BTD, positions_T)
    x_BTD = rms_norm(x_BTD, self.final_norm[...], cfg.norm_eps)
    logits_BTV = (x_BTD @ self.head[...].astype(cfg.dtype)).astype(jnp.float32)
    return sharding_lib.constrain_batch(logits_BTV)


def param_count(cfg: ModelConfig) -> dict[str, int]:
  """Analytic parameter counts: total, embedding table, and non-embedding."""
  D, F, L = cfg.d_model, cfg.d_ff, cfg.n_layers
  q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  per_layer = D * q_dim + 2 * D * kv_dim + q_dim * D + 3 * D * F + 2 * D
  embed = cfg.vocab_size * D
  total = embed + L * per_layer + D + D * cfg.vocab_size
  return {"total": total, "embedding": embed, "non_embedding": total - embed}


def loss_and_accuracy(logits_BTV: Array, targets_BT: Array,
                      weights_BT: Array | None = None) -> tuple[Array, Array, Array]:
  """Token-mean cross-entropy, correct-token count and token count (all float32)."""
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
  if weights_BT is None:
    weights_BT = jnp.ones_like(nll_BT)
  weights_BT = weights_BT.astype(jnp.float32)
  count = jnp.sum(weights_BT)
  correct = jnp.sum((jnp.argmax(logits_BTV, axis=-1) == targets_BT) * weights_BT)
  return jnp.sum(nll_BT * weights_BT) / jnp.maximum(count, 1.0), correct, count
