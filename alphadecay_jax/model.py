"""LLaMA-style decoder in Flax NNX.

Token embedding, rotary position embedding (RoPE), RMSNorm, grouped-query attention
through `jax.nn.dot_product_attention`, SwiGLU MLP, untied output head, no biases.

The transformer blocks are stored *stacked*: every block parameter carries a leading
`layers` axis and the forward pass is one `jax.lax.scan`, so compile time does not grow
with depth. Kernels are (fan_in, fan_out) per layer, so a stacked kernel is
[layers, fan_in, fan_out] and spectral code sees one matrix per layer.

`ModelConfig.lipschitz=True` switches to the Lipschitz-friendly variant of arXiv
2507.13338 (same module, same parameter names minus the ones it drops): no norms (no
attn_norm, mlp_norm, final_norm), convex residuals x <- (1 - 1/(2N)) x + 1/(2N) block(x)
for each of the 2N attention / MLP blocks of N layers, attention softmax(s q.k / d_head) (1/d, not 1/sqrt(d))
with its output divided by 3, and a GeLU MLP gelu(x W_up) / 1.1289 W_down (no gate;
1.1289 = max GeLU slope). `lipschitz_bound(params, cfg)` certifies the whole network.

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
from alphadecay_jax import spectral

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots")
GELU_MAX_SLOPE = 1.1289  # max_x d/dx x Phi(x), at x = sqrt(2)


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
  lipschitz: bool = False      # the Lipschitz-friendly variant (module docstring)
  softmax_scale: float = 1.0   # s in softmax(s q.k / d_head); Lipschitz variant only

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
  if not isinstance(cfg.lipschitz, bool):
    raise ValueError(f"model.lipschitz={cfg.lipschitz!r} must be True or False")
  if not cfg.softmax_scale > 0:
    raise ValueError(f"model.softmax_scale={cfg.softmax_scale!r} must be > 0")


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
           std: float | None) -> nnx.Param:
  """A float32 parameter: normal(0, std), or ones when std is None (norm scales)."""
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  else:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, logical_axes=axes)


def _orthogonal_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
                      zero: bool = False) -> nnx.Param:
  """Per-matrix orthogonal init scaled to RMS->RMS norm 1 (every singular value
  sqrt(fan_out / fan_in)), or zeros: the Lipschitz variant starts inside its caps."""
  if zero:
    return nnx.Param(jnp.zeros(shape, jnp.float32), logical_axes=axes)
  m, n = shape[-2:]
  x = jax.random.normal(rngs.params(), shape, jnp.float32)
  # One QR at a time: concurrent batched LAPACK calls deadlock XLA:CPU's pool.
  qr = lambda a: jnp.linalg.qr(a)[0]
  if m >= n:
    q = spectral.map_matrices(qr, x)
  else:
    q = jnp.swapaxes(spectral.map_matrices(qr, jnp.swapaxes(x, -1, -2)), -1, -2)
  return nnx.Param(q * (n / m) ** 0.5, logical_axes=axes)


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
    if cfg.lipschitz:  # no norms, no gate; attn_o and mlp_down start at zero (as the paper)
      for name, shape, axes, zero in (
          ("attn_q", (L, D, q_dim), ("layers", "embed", "heads"), False),
          ("attn_k", (L, D, kv_dim), ("layers", "embed", "kv_heads"), False),
          ("attn_v", (L, D, kv_dim), ("layers", "embed", "kv_heads"), False),
          ("attn_o", (L, q_dim, D), ("layers", "heads", "embed"), True),
          ("mlp_up", (L, D, F), ("layers", "embed", "mlp"), False),
          ("mlp_down", (L, F, D), ("layers", "mlp", "embed"), True)):
        setattr(self, name, _orthogonal_param(rngs, shape, axes, zero))
      return
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
    if self.cfg.lipschitz:
      return self._lipschitz_layer(x_BTD, positions_T)
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

  def _lipschitz_layer(self, x_BTD: Array, positions_T: Array) -> Array:
    """Attention then MLP, each as a convex residual with weight 1/(2N); no norms."""
    cfg, dt = self.cfg, self.cfg.dtype
    B, T, _ = x_BTD.shape
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    mix = 1.0 / (2 * cfg.n_layers)
    h_ND = x_BTD.reshape(B * T, -1)
    q_BTNH = rope((h_ND @ self.attn_q[...].astype(dt)).reshape(B, T, N, H), positions_T,
                  cfg.rope_theta)
    k_BTKH = rope((h_ND @ self.attn_k[...].astype(dt)).reshape(B, T, K, H), positions_T,
                  cfg.rope_theta)
    v_BTKH = (h_ND @ self.attn_v[...].astype(dt)).reshape(B, T, K, H)
    # 1/d_head keeps the logits' sensitivity to q and k bounded by RMS norms (the
    # bound's a^2 ||Wq|| ||Wk|| term); /3 is the paper's attention output scale.
    o_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, is_causal=True,
                                          scale=cfg.softmax_scale / H)
    attn_ND = (o_BTNH.reshape(B * T, N * H) / 3.0) @ self.attn_o[...].astype(dt)
    x_BTD = (1.0 - mix) * x_BTD + mix * attn_ND.reshape(x_BTD.shape)
    h_ND = x_BTD.reshape(B * T, -1)
    hidden_NF = jax.nn.gelu(h_ND @ self.mlp_up[...].astype(dt), approximate=False)
    mlp_ND = (hidden_NF / GELU_MAX_SLOPE) @ self.mlp_down[...].astype(dt)
    return (1.0 - mix) * x_BTD + mix * mlp_ND.reshape(x_BTD.shape)


class Transformer(nnx.Module):
  """Decoder-only LM: embed -> stacked blocks -> RMSNorm -> untied head (float32 logits)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                        cfg.init_std)
    if cfg.lipschitz:  # token vectors at RMS 1, no final norm, zero head (as the paper)
      e = self.embed[...]
      self.embed = nnx.Param(e / jnp.sqrt(jnp.mean(e * e, axis=-1, keepdims=True)),
                             logical_axes=("vocab", "embed"))
      self.blocks = Blocks(cfg, rngs=rngs)
      self.head = _orthogonal_param(rngs, (cfg.d_model, cfg.vocab_size),
                                    ("embed", "vocab"), zero=True)
      return
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
    if not cfg.lipschitz:
      x_BTD = rms_norm(x_BTD, self.final_norm[...], cfg.norm_eps)
    logits_BTV = (x_BTD @ self.head[...].astype(cfg.dtype)).astype(jnp.float32)
    return sharding_lib.constrain_batch(logits_BTV)


def param_count(cfg: ModelConfig) -> dict[str, int]:
  """Analytic parameter counts: total, embedding table, and non-embedding."""
  D, F, L = cfg.d_model, cfg.d_ff, cfg.n_layers
  q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  if cfg.lipschitz:  # no norms, no gate
    per_layer, final_norm = D * q_dim + 2 * D * kv_dim + q_dim * D + 2 * D * F, 0
  else:
    per_layer, final_norm = D * q_dim + 2 * D * kv_dim + q_dim * D + 3 * D * F + 2 * D, D
  embed = cfg.vocab_size * D
  total = embed + L * per_layer + final_norm + D * cfg.vocab_size
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


def rms_operator_norms(ws: list[Array]) -> list[Array]:
  """||W||_rms = sqrt(fan_in / fan_out) * sigma_max of each [..., fan_in, fan_out] (exact).

  Gram eigenvalues (the top one is accurate) through `spectral.esd_many`, which batches
  and sequences the eigendecompositions: concurrent LAPACK calls deadlock XLA:CPU.
  """
  eigs = spectral.esd_many(ws, "gram")
  return [(w.shape[-2] / w.shape[-1]) ** 0.5 * jnp.sqrt(e[..., -1])
          for w, e in zip(ws, eigs)]


def bound_from_norms(norms: dict[str, Array], n_layers: int,
                     softmax_scale: float = 1.0) -> Array:
  """Lipschitz bound of the Lipschitz variant from its weight norms (arXiv 2507.13338).

  `norms`: 'embed' (largest token-vector RMS), 'head' (RMS->RMS), and per layer [N]
  arrays 'attn_q', 'attn_k', 'attn_v', 'attn_o', 'mlp_up', 'mlp_down' (RMS->RMS).
  With alpha = 1/(2N), activation RMS bound a (a0 = the embedding norm; the paper's code
  fixes a0 = 1, valid only when embeddings are projected to RMS <= 1):
    a <- (1-alpha) a + alpha a ||Wo|| ||Wv|| / 3;  a <- (1-alpha) a + alpha a ||Wd|| ||Wu|| / 1.1289
    L_att = (s/3) ||Wo|| (||Wv|| + 2 ||Wv|| a^2 ||Wq|| ||Wk||)   (a: the layer's input bound)
    L <- (1-alpha) L + alpha L L_att;  L <- (1-alpha) L + alpha L ||Wd|| ||Wu|| / 1.1289
  from L = L_embed, and finally L * ||W_head||. All norms 1, N = 3, s = 1: 0.8758.
  """
  alpha = 1.0 / (2 * n_layers)
  a = bound = jnp.asarray(norms["embed"], jnp.float32)
  for l in range(n_layers):
    q, k, v, o, up, down = (norms[name][l] for name in
                            ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"))
    l_att = softmax_scale / 3.0 * o * (v + 2.0 * v * a * a * q * k)
    l_mlp = down * up / GELU_MAX_SLOPE
    bound = (1 - alpha) * bound + alpha * bound * l_att
    bound = (1 - alpha) * bound + alpha * bound * l_mlp
    a = (1 - alpha) * a + alpha * a * o * v / 3.0
    a = (1 - alpha) * a + alpha * a * l_mlp
  return bound * norms["head"]


def weight_norms(params: Any) -> dict[str, Array]:
  """The norms `bound_from_norms` needs, from a Lipschitz-variant parameter dict."""
  embed = jnp.asarray(params["embed"], jnp.float32)
  names = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down")
  matrices = [params["blocks"][name] for name in names] + [params["head"]]
  *hidden, head = rms_operator_norms(matrices)
  norms = dict(zip(names, hidden), head=head)
  norms["embed"] = jnp.max(jnp.sqrt(jnp.mean(embed * embed, axis=-1)))
  return norms


def lipschitz_bound(params: Any, cfg: ModelConfig) -> Array:
  """Certified upper bound on the Lipschitz constant of the Lipschitz variant (one-hot
  tokens -> logits, RMS norms), from exact spectral norms of `params` (a pure dict)."""
  if not cfg.lipschitz:
    raise ValueError("lipschitz_bound needs model.lipschitz=True (the standard model's "
                     "norms and residuals have no such bound)")
  return bound_from_norms(weight_norms(params), cfg.n_layers, cfg.softmax_scale)


def bound_at_caps(cfg: ModelConfig, w_max: float, head_w_max: float,
                  embed_max_rms: float = 1.0) -> float:
  """The bound when every hidden matrix sits at w_max, the head at head_w_max and token
  vectors at embed_max_rms: what projections with these caps certify (the bound is
  increasing in every norm)."""
  layer = jnp.full((cfg.n_layers,), w_max, jnp.float32)
  norms = {name: layer for name in
           ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down")}
  norms.update(embed=embed_max_rms, head=head_w_max)
  return float(bound_from_norms(norms, cfg.n_layers, cfg.softmax_scale))


_BOUND_FNS: dict[ModelConfig, Any] = {}


def lipschitz_metrics(params: Any, cfg: ModelConfig) -> dict[str, float]:
  """{'lipschitz_bound': ...} for the Lipschitz variant (jitted once per config), else {}."""
  if not cfg.lipschitz:
    return {}
  if cfg not in _BOUND_FNS:
    _BOUND_FNS[cfg] = jax.jit(lambda p: lipschitz_bound(p, cfg))
  return {"lipschitz_bound": float(_BOUND_FNS[cfg](params))}
