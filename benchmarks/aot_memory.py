r"""Ahead-of-time compile of the LLaMA-1B train step for 8 simulated CPU devices (FSDP).

  /work/venv/bin/python benchmarks/aot_memory.py [--batch_size 512] [--seq_len 256]

Nothing is allocated: the train state exists only as ShapeDtypeStructs carrying their
shardings (`train_state.state_spec`), and the step is lowered and compiled from those
(`jit_train_step(...).lower(spec.abstract, abstract_batch).compile()`). Prints ONE JSON
line on stdout (progress on stderr) with the state size, XLA's per-device memory
analysis of the compiled step, and which parameters (if any) are fully replicated.

`memory_analysis()` is what XLA reports for the CPU backend; a TPU or GPU compile of the
same program will lay out temporaries differently (bf16 activations, fusion, remat), so
the temp figure is indicative only. Argument bytes are exact: they are the per-device
shards of the inputs. The inputs are the state AND the batch, so the state-only ratio
subtracts the per-device batch bytes.
"""

from __future__ import annotations

import os

NUM_DEVICES = 8
# Must happen before jax is imported anywhere in this process.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split()
     if not f.startswith("--xla_force_host_platform_device_count")]
    + [f"--xla_force_host_platform_device_count={NUM_DEVICES}"])

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import _common  # noqa: E402  (sets up sys.path for the package imports below)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alphadecay_jax import model as model_lib  # noqa: E402
from alphadecay_jax import optimizers  # noqa: E402
from alphadecay_jax import sharding as sharding_lib  # noqa: E402
from alphadecay_jax import train as train_lib  # noqa: E402
from alphadecay_jax import train_state as ts  # noqa: E402

VOCAB = 32_000  # T5 SentencePiece
TARGET_RATIO_TOLERANCE = 0.10


def _nbytes(x: Any) -> int:
  return int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize


def _shard_nbytes(x: Any, sharding: jax.sharding.Sharding) -> int:
  """Bytes one device holds of `x` under `sharding` (a replicated leaf counts whole)."""
  return int(math.prod(sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize


def _path(path: tuple) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def replication_report(abstract_tree: Any, shardings_tree: Any) -> dict[str, Any]:
  """Which leaves are fully replicated, with their bytes; specs of all leaves by path."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
  shardings = jax.tree.leaves(shardings_tree)
  replicated, specs = [], {}
  replicated_bytes = 0
  for (path, x), sharding in zip(leaves, shardings, strict=True):
    name = _path(path)
    specs[name] = str(sharding.spec)
    if sharding.is_fully_replicated:
      replicated.append(name)
      replicated_bytes += _nbytes(x)
  return {"leaves": len(leaves), "fully_replicated": replicated,
          "fully_replicated_bytes": replicated_bytes, "specs": specs}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="llama_1b", help="config name or path")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="global batch (default: the config's batch_size)")
  parser.add_argument("--seq_len", type=int, default=None,
                      help="sequence length (default: the config's seq_len)")
  args = parser.parse_args()
  wall = time.perf_counter()

  config = _common.load_config(args.config)
  if args.batch_size is not None:
    config.batch_size = args.batch_size
  if args.seq_len is not None:
    config.seq_len = args.seq_len
  mesh_cfg = dict(data=1, fsdp=NUM_DEVICES, tensor=1)
  config.mesh.update(mesh_cfg)
  # Validate every trainer key except the data block: nothing is read here, and the
  # C4 recipe needs a local SentencePiece file that an AOT check has no use for.
  checked = config.copy_and_resolve_references()
  checked.data.source = "synthetic"
  train_lib.validate_config(checked, jax.device_count())
  model_cfg = train_lib.model_config(config, VOCAB)
  mesh = sharding_lib.make_mesh(mesh_cfg)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)

  spec, spec_s = _common.timed(lambda: ts.state_spec(model_cfg, tx, mesh))
  batch_sh = sharding_lib.batch_sharding(mesh)
  shape = (config.batch_size, config.seq_len)
  abstract_batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sh)
                    for k in ("inputs", "targets")}
  step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
  lowered, lower_s = _common.timed(lambda: step_fn.lower(spec.abstract, abstract_batch))
  _common.log(f"lowered in {lower_s:.2f}s")
  compiled, compile_s = _common.timed(lowered.compile)
  _common.log(f"compiled in {compile_s:.2f}s")
  memory = compiled.memory_analysis()

  state_leaves = jax.tree.leaves(spec.abstract)
  state_bytes = sum(_nbytes(x) for x in state_leaves)
  state_shard_bytes = sum(_shard_nbytes(x, s) for x, s in
                          zip(state_leaves, jax.tree.leaves(spec.shardings), strict=True))
  param_bytes = sum(_nbytes(x) for x in jax.tree.leaves(spec.abstract.params))
  batch_bytes = sum(_shard_nbytes(x, x.sharding) for x in abstract_batch.values())
  per_device = state_bytes / NUM_DEVICES
  argument = int(memory.argument_size_in_bytes)
  params_report = replication_report(spec.abstract.params, spec.shardings.params)
  opt_report = replication_report(spec.abstract.opt_state, spec.shardings.opt_state)
  state_only_ratio = (argument - batch_bytes) / per_device

  report = {
      "benchmark": "aot_memory",
      "date": _common.utc_now(),
      "machine": _common.machine_info(),
      "config": _common.config_path(args.config).replace(_common.REPO_ROOT + "/", ""),
      "mesh": dict(mesh.shape),
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "grad_accum_steps": config.grad_accum_steps,
      "vocab_size": model_cfg.vocab_size, "d_model": model_cfg.d_model,
      "n_layers": model_cfg.n_layers, "compute_dtype": model_cfg.compute_dtype,
      "remat": model_cfg.remat, "optimizer": config.optimizer.name,
      "param_count": model_lib.param_count(model_cfg)["total"],
      "param_count_from_state": sum(math.prod(x.shape)
                                    for x in jax.tree.leaves(spec.abstract.params)),
      "param_bytes": param_bytes,
      "state_bytes_total": state_bytes,
      "state_bytes_total_over_devices": per_device,
      "state_bytes_per_device_from_shardings": state_shard_bytes,
      "batch_bytes_per_device": batch_bytes,
      "memory_analysis_per_device": {
          "argument_size_in_bytes": argument,
          "output_size_in_bytes": int(memory.output_size_in_bytes),
          "alias_size_in_bytes": int(memory.alias_size_in_bytes),
          "temp_size_in_bytes": int(memory.temp_size_in_bytes),
          "generated_code_size_in_bytes": int(memory.generated_code_size_in_bytes),
      },
      "ratio_argument_to_state_over_devices": argument / per_device,
      "ratio_state_only_argument_minus_batch_to_state_over_devices": state_only_ratio,
      "state_only_ratio_within_10pct": abs(state_only_ratio - 1.0) <= TARGET_RATIO_TOLERANCE,
      "params_fully_replicated": params_report["fully_replicated"],
      "params_fully_replicated_bytes": params_report["fully_replicated_bytes"],
      "params_sharded_count": params_report["leaves"] - len(params_report["fully_replicated"]),
      "params_total_count": params_report["leaves"],
      "params_partition_specs": params_report["specs"],
      "opt_state_fully_replicated": opt_report["fully_replicated"],
      "opt_state_fully_replicated_bytes": opt_report["fully_replicated_bytes"],
      "state_spec_seconds": round(spec_s, 3),
      "lower_seconds": round(lower_s, 3),
      "compile_seconds": round(compile_s, 3),
      "lower_plus_compile_seconds": round(lower_s + compile_s, 3),
      "wall_seconds": round(time.perf_counter() - wall, 1),
      "note": "memory_analysis as reported by XLA for the CPU backend, per device",
  }
  print(json.dumps(report))


if __name__ == "__main__":
  main()
