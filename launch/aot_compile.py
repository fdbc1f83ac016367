r"""Compile the real train step for a Cloud TPU slice on a machine without a TPU.

  pip install -e '.[tpu]'     # the libtpu wheel from PyPI; no TPU needed
  python launch/aot_compile.py --config configs/llama_1b.py --topology v5e:4x4
  python launch/aot_compile.py --config configs/llama_1b.py --topology v5p:2x2x2 \
      --set mesh.fsdp=4 --set mesh.tensor=2 --set batch_size=256

`jax.experimental.topologies` describes the slice's chips from libtpu alone; the
trainer's own mesh, state shardings and jitted step (`train_state.jit_train_step`) are
lowered from ShapeDtypeStructs (nothing is allocated) and compiled by the TPU compiler.
Prints per-chip argument / output / temporary bytes from `memory_analysis()`, the
chip's HBM, whether the step fits, and the compiled FLOPs per step (per chip and for
the slice, next to the analytic 6N + attention count the trainer reports MFU with).
`--json` prints one JSON line instead (benchmarks/run_all.py collects it).

Topologies: `v5e:AxB`, `v6e:AxB`, `v5p:AxBxC` (one JAX device per chip). The data
block of the config is not read (validation uses a synthetic source), so configs whose
data needs local files (C4, SentencePiece) compile as they are.
Exit status: 0 compiled (fits or not; `--require_fit` makes "does not fit" exit 1),
2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GiB = 2**30
# Per-chip HBM (Cloud TPU system architecture pages: v5e 16 GB HBM2, v5p 95 GB HBM2e,
# v6e 32 GB, v4 32 GiB); taken as GiB. The runtime reserves a little of it, so a
# margin under ~3% is reported as tight.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
PEAK_BF16_TFLOPS = {"v4": 275.0, "v5e": 197.0, "v5p": 459.0, "v6e": 918.0}
TIGHT_MARGIN = 0.03


def _fail(message: str) -> None:
  """Bad arguments or configuration: the reason on stderr, exit status 2."""
  print(f"aot_compile: {message}", file=sys.stderr)
  raise SystemExit(2)


def _parse_set(items: list[str]) -> list[tuple[str, Any]]:
  out = []
  for item in items:
    key, sep, raw = item.partition("=")
    if not sep or not key:
      _fail(f"--set {item!r} must be key=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw  # a bare string, e.g. --set model.remat=full
    out.append((key, value))
  return out


def _apply(config: Any, key: str, value: Any) -> None:
  node = config
  *parents, leaf = key.split(".")
  for parent in parents:
    if parent not in node:
      _fail(f"--set {key}: no key {parent!r} in the config")
    node = node[parent]
  if leaf not in node:
    _fail(f"--set {key}: no key {leaf!r} in the config")
  node[leaf] = value


def _generation(topology: str) -> str:
  gen = topology.split(":", 1)[0].lower()
  if gen not in HBM_BYTES or ":" not in topology:
    _fail(f"--topology {topology!r} must look like v5e:4x4, "
                     f"v6e:2x2 or v5p:2x2x2 (generations {sorted(HBM_BYTES)})")
  return gen


def _subjaxprs(params: dict) -> list[Any]:
  """Jaxprs nested in an equation's params (jit, remat, custom_vjp, cond branches, ...)."""
  out = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "jaxpr") and hasattr(item, "consts"):  # ClosedJaxpr
        out.append(item.jaxpr)
      elif hasattr(item, "eqns"):  # Jaxpr
        out.append(item)
  return out


def matmul_flops(jaxpr: Any) -> float:
  """2 x M x N x K summed over every dot_general of a (global) jaxpr.

  Scan bodies count `length` times, the costlier branch of a cond once, while-loop
  bodies once. XLA's compiled `cost_analysis()` counts a scan's while-loop body once,
  so for the layer-scanned model it reports about one layer's worth; this count is
  the per-step figure (rematerialised forward passes included, elementwise work not).
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
      continue
    subs = _subjaxprs(eqn.params)
    if not subs:
      continue
    if eqn.primitive.name == "cond":
      total += max(matmul_flops(sub) for sub in subs)
    elif eqn.primitive.name == "scan":
      total += eqn.params["length"] * sum(matmul_flops(sub) for sub in subs)
    else:
      total += sum(matmul_flops(sub) for sub in subs)
  return total


def compile_report(config: Any, topology: str, config_label: str = "") -> dict[str, Any]:
  """Lowers and compiles `config`'s train step for `topology`; returns the figures."""
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies

  from alphadecay_jax import metrics as metrics_lib
  from alphadecay_jax import model as model_lib
  from alphadecay_jax import optimizers
  from alphadecay_jax import sharding as sharding_lib
  from alphadecay_jax import tokenizers
  from alphadecay_jax import train as train_lib
  from alphadecay_jax import train_state as ts

  gen = _generation(topology)
  wall = time.perf_counter()
  try:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  except Exception as err:  # unknown shape, or no libtpu
    _fail(f"cannot describe TPU topology {topology!r}: {type(err).__name__}: {err}")
  devices = list(topo.devices)
  hosts = len({d.process_index for d in devices})

  # Validate every trainer key for this slice; the data block is not read here.
  checked = config.copy_and_resolve_references()
  checked.data.source = "synthetic"
  try:
    train_lib.validate_config(checked, len(devices), hosts)
  except ValueError as err:
    _fail(f"config rejected for {topology} ({len(devices)} chips, {hosts} hosts): {err}")
  vocab = config.model.vocab_size or tokenizers.build_tokenizer(config.data).vocab_size
  model_cfg = train_lib.model_config(config, vocab)
  mesh = sharding_lib.make_mesh(config.mesh, devices=devices)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), jnp.int32,
                                            sharding=batch_sh)
                    for k in ("inputs", "targets")}
  step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
  program_flops = matmul_flops(jax.make_jaxpr(step_fn)(spec.abstract, abstract_batch).jaxpr)
  start = time.perf_counter()
  lowered = step_fn.lower(spec.abstract, abstract_batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  argument, output = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  peak = argument + output - alias + temp
  hbm = HBM_BYTES[gen]
  chips = len(devices)
  flops_chip = float(cost.get("flops", float("nan")))
  tokens = config.batch_size * config.seq_len
  analytic = metrics_lib.flops_per_token(model_cfg, config.seq_len) * tokens
  state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize
                    for x in jax.tree.leaves(spec.abstract))
  return {
      "benchmark": "aot_compile",
      "config": config_label,
      "topology": topology,
      "device_kind": devices[0].device_kind,
      "chips": chips, "hosts": hosts,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "grad_accum_steps": config.grad_accum_steps,
      "compute_dtype": model_cfg.compute_dtype, "remat": model_cfg.remat,
      "optimizer": config.optimizer.name,
      "param_count": model_lib.param_count(model_cfg)["total"],
      "state_bytes_total": state_bytes,
      "argument_bytes_per_chip": argument,
      "output_bytes_per_chip": output,
      "alias_bytes_per_chip": alias,
      "temp_bytes_per_chip": temp,
      "generated_code_bytes": int(mem.generated_code_size_in_bytes),
      "peak_bytes_per_chip": peak,
      "hbm_bytes_per_chip": hbm,
      "fits": peak <= hbm,
      "hbm_margin_fraction": round(1 - peak / hbm, 4),
      "xla_cost_analysis_flops_per_chip": flops_chip,
      "flops_per_step_slice": program_flops,
      "flops_per_step_per_chip": program_flops / chips,
      "analytic_flops_per_step_slice": analytic,
      "program_over_analytic": round(program_flops / analytic, 4),
      "min_step_seconds_at_peak": program_flops / chips / (PEAK_BF16_TFLOPS[gen] * 1e12),
      "lower_seconds": round(lower_s, 2), "compile_seconds": round(compile_s, 2),
      "wall_seconds": round(time.perf_counter() - wall, 1),
  }


def format_report(r: dict[str, Any]) -> str:
  def gib(b: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
      if b >= size:
        return f"{b / size:,.2f} {unit}"
    return f"{b:,.0f} B"

  def flop(f: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
      if f >= size:
        return f"{f / size:,.3f} {unit}"
    return f"{f:,.0f} FLOP"

  recompute = "; remat recomputes the forward" if r["remat"] != "none" else ""
  margin = r["hbm_margin_fraction"]
  verdict = ("FITS" if margin >= TIGHT_MARGIN else "FITS (tight)") if r["fits"] \
      else "DOES NOT FIT"
  return "\n".join([
      f"AOT compile of {r['config']} for TPU {r['topology']}: {r['chips']} chips "
      f"({r['device_kind']}), {r['hosts']} host(s)",
      f"  mesh {r['mesh']}; global batch {r['batch_size']} x {r['seq_len']} tokens, "
      f"{r['grad_accum_steps']} micro-batch(es); {r['compute_dtype']}, remat "
      f"{r['remat']}; {r['optimizer']}",
      f"  params {r['param_count']:,}; train state {gib(r['state_bytes_total'])} in total",
      "  per chip (memory_analysis):",
      f"    arguments    {gib(r['argument_bytes_per_chip'])}",
      f"    outputs      {gib(r['output_bytes_per_chip'])} "
      f"(aliased to arguments: {gib(r['alias_bytes_per_chip'])}, the donated state)",
      f"    temporaries  {gib(r['temp_bytes_per_chip'])}",
      f"    peak = arguments + outputs - aliased + temporaries = "
      f"{gib(r['peak_bytes_per_chip'])} of {gib(r['hbm_bytes_per_chip'])} HBM -> "
      f"{verdict} ({margin:+.1%} headroom)",
      f"  FLOPs per step (matmuls of the compiled program, scan trip counts applied): "
      f"{flop(r['flops_per_step_per_chip'])} per chip, {flop(r['flops_per_step_slice'])} "
      f"for the slice = {r['program_over_analytic']:.2f}x the analytic 6N + attention "
      f"{flop(r['analytic_flops_per_step_slice'])}{recompute}",
      f"    (XLA cost_analysis: {flop(r['xla_cost_analysis_flops_per_chip'])} per chip; it "
      f"counts the layer scan's loop body once)",
      f"  at the chip's peak bf16 rate a step takes >= "
      f"{r['min_step_seconds_at_peak'] * 1e3:,.3g} ms",
      f"  lowered in {r['lower_seconds']} s, compiled in {r['compile_seconds']} s",
  ])


def prepare_environment() -> None:
  """Call before JAX starts: the default backend stays CPU (this machine) and the TPU
  compiler is reached through the topology only; several compiles may run at once
  (libtpu's one-process lock is for real chips); no metadata-server lookups."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--config", required=True, help="config file, e.g. configs/llama_1b.py")
  parser.add_argument("--topology", required=True, help="e.g. v5e:4x4, v6e:2x2, v5p:2x2x2")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key (repeatable), e.g. mesh.tensor=2")
  parser.add_argument("--json", action="store_true", help="print one JSON line")
  parser.add_argument("--require_fit", action="store_true",
                      help="exit with status 1 if the step does not fit in HBM")
  args = parser.parse_args(argv)
  _generation(args.topology)
  if not os.path.isfile(args.config):
    _fail(f"no config file {args.config!r}")
  prepare_environment()
  try:
    import libtpu  # noqa: F401
  except ImportError:
    _fail("the libtpu wheel is not installed; run `pip install -e '.[tpu]'`")

  from alphadecay_jax import train as train_lib
  config = train_lib.load_config(args.config)
  for key, value in _parse_set(args.set):
    _apply(config, key, value)
  report = compile_report(config, args.topology, config_label=args.config)
  print(json.dumps(report) if args.json else format_report(report), flush=True)
  return 1 if args.require_fit and not report["fits"] else 0


if __name__ == "__main__":
  sys.exit(main())
