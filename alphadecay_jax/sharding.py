"""Device mesh, logical-axis rules and the NamedShardings of train state and batches.

Mesh axes are ('data', 'fsdp', 'tensor'). Parameters are annotated with logical axes
in `model.py`; `DEFAULT_RULES` maps them to mesh axes (FSDP shards the `embed` axis,
tensor parallelism the heads / mlp / vocab axes). A dimension that the mesh axis does
not divide is left replicated rather than failing, so tiny test models still run on 8
devices. Optimizer-state leaves inherit the sharding of the parameter they mirror.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
)


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves `mesh.{data,fsdp,tensor}` (one of them may be -1: all remaining devices)."""
  sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}={size} must be a positive integer or -1 "
                       "(all remaining devices)")
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {free}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh: the fixed axes multiply to {fixed}, which does not "
                       f"divide the {num_devices} available devices")
    sizes[free[0]] = num_devices // fixed
  total = math.prod(sizes.values())
  if total > num_devices:
    raise ValueError(f"mesh {sizes} needs {total} devices but only {num_devices} "
                     "are available")
  return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(mesh_cfg: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with compiler-propagated (Auto) axis types."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  used = devices[:math.prod(shape)]
  return jax.make_mesh(shape, MESH_AXES, devices=used,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """Number of ways the batch is split (data x fsdp)."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def logical_axes(state: nnx.State) -> dict:
  """Pure-dict tree (same structure as the params) of each `logical_axes` annotation."""
  tree: dict = {}
  for path, variable in nnx.to_flat_state(state):
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = tuple(variable.get_metadata()["logical_axes"])
  return tree


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = DEFAULT_RULES) -> P:
  """PartitionSpec for one array; mesh axes that do not divide the dim are dropped."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape, strict=True):
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover "
                       f"{sorted(table)}")
    target = table.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
    if mesh_axes and dim % math.prod(mesh.shape[a] for a in mesh_axes) == 0:
      used.update(mesh_axes)
      spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    else:
      spec.append(None)
  return P(*spec)


def param_shardings(axes_tree: Any, abstract_params: Any, mesh: Mesh,
                    rules: Rules = DEFAULT_RULES) -> Any:
  """NamedSharding per parameter from its logical axes."""
  return jax.tree.map(
      lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)),
      axes_tree, abstract_params, is_leaf=lambda a: isinstance(a, tuple))


def _dict_keys(path: tuple) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def mirrored_shardings(abstract_tree: Any, abstract_params: Any, params_shardings: Any,
                       mesh: Mesh) -> Any:
  """Shardings for a tree whose leaves mirror parameters (optimizer moments).

  A leaf takes the sharding of the parameter whose dict path is a suffix of the leaf's
  path and whose shape matches (this sees through optax.chain, masked, multi_transform
  and inject_hyperparams); any other leaf (counts, per-module statistics) is replicated.
  """
  by_path = {}
  for (path, x), sharding in zip(
      jax.tree_util.tree_leaves_with_path(abstract_params),
      jax.tree.leaves(params_shardings), strict=True):
    by_path[_dict_keys(path)] = (x.shape, sharding)
  replicated = NamedSharding(mesh, P())

  def pick(path: tuple, x: Any) -> NamedSharding:
    keys = _dict_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and tuple(hit[0]) == tuple(np.shape(x)):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def constrain_batch(x: jax.Array) -> jax.Array:
  """Pins an activation's leading (batch) axis to data x fsdp under the current mesh.

  Without it, FSDP's sharded contracting dims (e.g. the head kernel's d_model) lead
  the compiler to gather the batch instead of the weights: for the 1B config that
  replicated the global [batch, seq, vocab] logits on every device (43.7 GB of
  temporaries per device instead of 11.2 GB). A no-op outside a mesh context.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, P(axes))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch rows split over data x fsdp; sequence and features replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  """Assembles a global batch from this process's rows (works on one or many hosts)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
