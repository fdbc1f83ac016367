"""What an optimizer state exposes for logging: transforms' metrics and its size."""

from __future__ import annotations

from typing import Any

import jax


def state_metrics(opt_state: Any) -> dict[str, Any]:
  """Metrics that transforms expose from their state, for logging.

  Every state node with a `log_metrics()` method (e.g. a NamedTuple state of one of our
  transforms) contributes its dict, found anywhere in the (chained, masked, wrapped...)
  state, including inside another such node (AlphaDecay inside a SAM wrapper).
  """
  out: dict[str, Any] = {}

  def visit(node: Any) -> None:
    if callable(getattr(node, "log_metrics", None)):
      out.update(node.log_metrics())
    children = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
    for child in children:
      if child is not node:
        visit(child)

  visit(opt_state)
  return out


def state_bytes(opt_state: Any) -> int:
  """Bytes held by an optimizer state (works on abstract ShapeDtypeStructs too)."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state)
                 if hasattr(x, "dtype")))
