"""Module roles, matrix views and masks of a parameter tree, from the parameter paths.

A *role* names what a leaf does ('attn_q', ..., 'mlp_down', 'embed', 'head', 'norm',
'other'); it comes from the last path key, with aliases for common naming schemes
(`q_proj`, `wq`, `gate_proj`, ...). A *matrix view* says which axes of a leaf form the
matrix (fan_in, fan_out) and which are stacked (layers from `nnx.scan`/vmap, heads):
spectral statistics are computed per matrix, so a stacked [layers, fan_in, fan_out]
kernel yields one value per layer. Everything here is static (shapes and paths only),
so masks can be built once, outside jit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import jax
import numpy as np

ATTENTION = ("attn_q", "attn_k", "attn_v", "attn_o")
MLP = ("mlp_gate", "mlp_up", "mlp_down")
HIDDEN = ATTENTION + MLP
ROLES = HIDDEN + ("embed", "head", "norm", "other")

_ALIASES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_o",
    "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_o",
    "query": "attn_q", "key": "attn_k", "value": "attn_v", "out": "attn_o",
    "gate_proj": "mlp_gate", "up_proj": "mlp_up", "down_proj": "mlp_down",
    "embedding": "embed", "wte": "embed", "tok_embeddings": "embed", "embed_tokens": "embed",
    "lm_head": "head", "output": "head", "unembed": "head",
}


def _keys(path: tuple) -> list[str]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return out


def role_of(path: tuple) -> str:
  """Role of the leaf at `path` (a jax key path); 'other' if unrecognised.

  Generic leaf names ('kernel', 'value', 'scale', 'embedding') defer to their parent.
  """
  keys = [k.lower() for k in _keys(path)]
  for key in reversed(keys):
    if key in ROLES:
      return key
    if key in _ALIASES and key not in ("value", "embedding"):
      return _ALIASES[key]
    if "norm" in key:
      return "norm"
    if key in ("kernel", "weight", "w", "value", "scale", "embedding"):
      if key == "embedding":
        return "embed"
      continue
    break
  return "other"


def param_roles(params: Any) -> Any:
  """Tree of role strings, same structure as `params`."""
  return jax.tree_util.tree_map_with_path(lambda p, _: role_of(p), params)


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How to see an array as a stack of matrices [*stacked, fan_in, fan_out]."""

  shape: tuple[int, ...]
  fan_in_axes: tuple[int, ...]
  fan_out_axes: tuple[int, ...]

  @property
  def stacked_axes(self) -> tuple[int, ...]:
    used = set(self.fan_in_axes + self.fan_out_axes)
    return tuple(a for a in range(len(self.shape)) if a not in used)

  @property
  def stacked_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.stacked_axes)

  @property
  def matrix_shape(self) -> tuple[int, int]:
    return (math.prod(self.shape[a] for a in self.fan_in_axes),
            math.prod(self.shape[a] for a in self.fan_out_axes))

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """[*stacked, fan_in, fan_out] (a transpose + reshape; free for the default view)."""
    order = self.stacked_axes + self.fan_in_axes + self.fan_out_axes
    return x.transpose(order).reshape(self.stacked_shape + self.matrix_shape)

  def from_matrices(self, m: jax.Array) -> jax.Array:
    """Inverse of `to_matrices`."""
    order = self.stacked_axes + self.fan_in_axes + self.fan_out_axes
    x = m.reshape(tuple(self.shape[a] for a in order))
    return x.transpose(np.argsort(order))


def default_view(x: Any) -> MatrixView | None:
  """Last two axes are (fan_in, fan_out) as in Flax kernels; leading axes are stacked.

  Vectors and scalars have no matrix view (None).
  """
  shape = tuple(np.shape(x))
  if len(shape) < 2:
    return None
  return MatrixView(shape, (len(shape) - 2,), (len(shape) - 1,))


ViewFn = Callable[[tuple, Any], "MatrixView | None"]


def matrix_views(params: Any, view_fn: ViewFn | None = None) -> Any:
  """Tree of MatrixView (or None), from `view_fn(path, leaf)` or the default view."""
  fn = view_fn or (lambda _, x: default_view(x))
  return jax.tree_util.tree_map_with_path(fn, params)


def role_mask(params: Any, roles: Iterable[str]) -> Any:
  """True for leaves whose role is in `roles` (and that have a matrix view)."""
  roles = frozenset(roles)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: role_of(p) in roles and default_view(x) is not None, params)


def hidden_matrix_mask(params: Any) -> Any:
  """True for attention and MLP matrices: what SinkGD, Muon and the projections touch."""
  return role_mask(params, HIDDEN)


def tuned_module_mask(params: Any, *, roles: Iterable[str] = HIDDEN,
                      exclude_first_layer_q: bool = True,
                      view_fn: ViewFn | None = None) -> Any:
  """Per-matrix boolean arrays (shape: the leaf's stacked shape) of modules AlphaDecay tunes.

  As the reference (arXiv 2506.14562, hed-ucas/AlphaDecay): every attention and MLP
  matrix except the first linear layer (layer 0's q projection); embeddings, norms and
  the head are measured but keep the base decay. Leaves with no matrix view get a
  scalar False.
  """
  roles = frozenset(roles)
  views = matrix_views(params, view_fn)

  def leaf(path: tuple, view: MatrixView | None) -> np.ndarray:
    if view is None:
      return np.zeros((), bool)
    mask = np.full(view.stacked_shape, role_of(path) in roles, bool)
    if exclude_first_layer_q and role_of(path) == "attn_q" and mask.ndim:
      mask[(0,) * mask.ndim] = False
    return mask

  return jax.tree_util.tree_map_with_path(leaf, views, is_leaf=is_view_leaf)


def is_view_leaf(x: Any) -> bool:
  return x is None or isinstance(x, MatrixView)


def count_modules(mask_tree: Any) -> int:
  """Number of True matrices in a `tuned_module_mask` tree."""
  return int(sum(np.sum(m) for m in jax.tree.leaves(mask_tree)))
