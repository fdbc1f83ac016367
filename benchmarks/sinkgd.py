r"""SinkGD vs AdamW: step time, optimizer-state bytes, 1B per-device memory, quality.

  /work/venv/bin/python benchmarks/sinkgd.py                       # every part
  /work/venv/bin/python benchmarks/sinkgd.py --parts step_time,state_bytes --pairs 8

Prints ONE JSON line on stdout (progress on stderr). Parts:
  state_bytes  optimizer-state bytes from the state's shapes (jax.eval_shape of tx.init,
               no allocation) for the 60M and 1B LLaMA configs (vocab 32000); target:
               sinkgd / adamw <= 0.12 at 1B (issue 4).
  step_time    the real jitted train step (`train_state.jit_train_step`, 1-device mesh,
               synthetic batches already on the device) of configs/cpu_10m.py for both
               optimizers, timed in interleaved pairs (adamw step, sinkgd step, ...) so
               load from other processes hits both alike; the ratio is the median of the
               per-pair ratios. Target <= 1.05.
  aot_memory   lower + compile the 1B train step for 8 simulated CPU devices (FSDP) with
               each optimizer, in a subprocess (XLA_FLAGS must be set before jax starts);
               XLA's `memory_analysis()` per device.
  quality      configs/default.py (Shakespeare chars, 400 steps) for `--seeds` seeds with
               each optimizer, eval every `--eval_every` steps: the first step at which
               sinkgd's validation loss reaches AdamW's final one (same seed), or null.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import _common  # sets up sys.path; must precede the package imports

PARTS = ("state_bytes", "step_time", "aot_memory", "quality")
OPTIMIZERS = ("adamw", "sinkgd")
VOCAB = 32_000


def _with_optimizer(config: Any, name: str, matrix_lr_scale: float) -> Any:
  config = config.copy_and_resolve_references()
  config.optimizer.name = name
  config.optimizer.sinkgd.matrix_lr_scale = matrix_lr_scale
  return config


def state_bytes(args: argparse.Namespace) -> dict[str, Any]:
  import jax
  from flax import nnx
  from alphadecay_jax import model as model_lib
  from alphadecay_jax import optimizers
  from alphadecay_jax import train as train_lib

  out = {}
  for name in ("llama_60m", "llama_1b"):
    base = _common.load_config(name)
    cfg = train_lib.model_config(base, VOCAB)
    abstract = nnx.eval_shape(lambda: model_lib.Transformer(cfg, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.split(abstract)[1])
    row = {"params": int(sum(x.size for x in jax.tree.leaves(params)))}
    for opt in OPTIMIZERS:
      config = _with_optimizer(base, opt, args.matrix_lr_scale)
      tx = optimizers.build_optimizer(config.optimizer, config.steps)
      row[f"{opt}_bytes"] = optimizers.state_bytes(jax.eval_shape(tx.init, params))
    row["ratio_sinkgd_to_adamw"] = row["sinkgd_bytes"] / row["adamw_bytes"]
    out[name] = row
  out["target_1b_ratio"] = 0.12
  out["meets_1b_target"] = out["llama_1b"]["ratio_sinkgd_to_adamw"] <= 0.12
  return out


def step_time(args: argparse.Namespace) -> dict[str, Any]:
  import _paired  # imports jax: only when this part runs

  base = _common.load_config("cpu_10m")
  configs = {opt: _with_optimizer(base, opt, args.matrix_lr_scale) for opt in OPTIMIZERS}
  out = _paired.paired_step_times(configs, args.pairs, args.warmup)
  times = out.pop("times")
  ratios = [s / a for s, a in zip(times["sinkgd"], times["adamw"])]
  result = {"config": "configs/cpu_10m.py", "pairs": args.pairs,
            "ratio_sinkgd_to_adamw": _common.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "target_ratio": 1.05, **out}
  result["meets_target"] = result["ratio_sinkgd_to_adamw"] <= 1.05
  _common.log(f"[step_time] ratio {result['ratio_sinkgd_to_adamw']:.3f}")
  return result


_AOT_CHILD = r"""
import json, sys
sys.path.insert(0, {bench!r})
import aot_memory  # sets 8 simulated devices before jax starts
import _common
import jax, jax.numpy as jnp
from alphadecay_jax import optimizers, sharding as sharding_lib, train as train_lib
from alphadecay_jax import train_state as ts
out = {{}}
for opt in {optimizers!r}:
  config = _common.load_config("llama_1b")
  config.optimizer.name = opt
  config.mesh.update(dict(data=1, fsdp=8, tensor=1))
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(train_lib.model_config(config, aot_memory.VOCAB), tx, mesh)
  sh = sharding_lib.batch_sharding(mesh)
  batch = {{k: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), jnp.int32, sharding=sh)
           for k in ("inputs", "targets")}}
  step = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
  compiled, seconds = _common.timed(lambda: step.lower(spec.abstract, batch).compile())
  mem = compiled.memory_analysis()
  opt_shard = sum(aot_memory._shard_nbytes(x, s) for x, s in zip(
      jax.tree.leaves(spec.abstract.opt_state), jax.tree.leaves(spec.shardings.opt_state)))
  out[opt] = dict(argument_bytes=int(mem.argument_size_in_bytes),
                  output_bytes=int(mem.output_size_in_bytes),
                  alias_bytes=int(mem.alias_size_in_bytes),
                  temp_bytes=int(mem.temp_size_in_bytes),
                  opt_state_bytes_per_device=int(opt_shard),
                  opt_state_fully_replicated=[k for k, v in aot_memory.replication_report(
                      spec.abstract.opt_state, spec.shardings.opt_state)["specs"].items()
                      if v == "PartitionSpec()"],
                  batch_size=config.batch_size, seq_len=config.seq_len,
                  lower_plus_compile_seconds=round(seconds, 2))
print(json.dumps(out))
"""


def aot_memory(args: argparse.Namespace) -> dict[str, Any]:
  code = _AOT_CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)),
                           optimizers=OPTIMIZERS)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=_common.REPO_ROOT)
  if proc.returncode:
    raise RuntimeError(f"aot_memory child failed:\n{proc.stderr[-3000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["devices"] = 8
  out["ratio_argument_bytes_sinkgd_to_adamw"] = (out["sinkgd"]["argument_bytes"]
                                                 / out["adamw"]["argument_bytes"])
  return out


def quality(args: argparse.Namespace) -> dict[str, Any]:
  from alphadecay_jax import train as train_lib

  runs: dict[str, dict[int, dict[int, float]]] = {opt: {} for opt in OPTIMIZERS}
  for seed in range(args.seeds):
    for opt in OPTIMIZERS:
      config = _with_optimizer(_common.load_config("default"), opt, args.matrix_lr_scale)
      config.update(seed=seed, eval_every=args.eval_every, checkpoint_every=0,
                    progress_bar=False)
      with tempfile.TemporaryDirectory() as workdir:
        _, seconds = _common.timed(lambda: train_lib.train(config, workdir))
        curve = {}
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          for line in f:
            record = json.loads(line)
            if "eval/loss" in record:
              curve[record["step"]] = record["eval/loss"]
      runs[opt][seed] = curve
      _common.log(f"[quality] seed {seed} {opt}: final eval loss "
                  f"{curve[max(curve)]:.4f} ({seconds:.0f}s); curve {json.dumps(curve)}")
  per_seed = []
  for seed in range(args.seeds):
    adamw, sink = runs["adamw"][seed], runs["sinkgd"][seed]
    target = adamw[max(adamw)]
    reached = [s for s in sorted(sink) if sink[s] <= target]
    per_seed.append({"seed": seed, "adamw_final_eval_loss": target,
                     "sinkgd_final_eval_loss": sink[max(sink)],
                     "sinkgd_steps_to_adamw_final": reached[0] if reached else None,
                     "adamw_steps": max(adamw)})

  def mean_std(key: str) -> list[float] | None:  # sample std; 0 for one value
    values = [r[key] for r in per_seed if r[key] is not None]
    if not values:
      return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return [round(statistics.mean(values), 4), round(std, 4)]

  return {"config": "configs/default.py", "eval_every": args.eval_every,
          "matrix_lr_scale": args.matrix_lr_scale,
          "mean_std": {"adamw_final_eval_loss": mean_std("adamw_final_eval_loss"),
                       "sinkgd_final_eval_loss": mean_std("sinkgd_final_eval_loss"),
                       "sinkgd_steps_to_adamw_final": mean_std("sinkgd_steps_to_adamw_final")},
          "seeds_reaching_adamw_final": sum(r["sinkgd_steps_to_adamw_final"] is not None
                                            for r in per_seed),
          "seeds": per_seed,
          "curves": {opt: {str(s): c for s, c in r.items()} for opt, r in runs.items()}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset "
                      f"of {PARTS} (default: all)")
  parser.add_argument("--pairs", type=int, default=10, help="timed step pairs")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--eval_every", type=int, default=25)
  parser.add_argument("--matrix_lr_scale", type=float, default=0.33,
                      help="optimizer.sinkgd.matrix_lr_scale for sinkgd runs")
  args = parser.parse_args()
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f"unknown parts {sorted(unknown)}; allowed: {PARTS}")
  wall = time.perf_counter()
  report: dict[str, Any] = {"benchmark": "sinkgd", "date": _common.utc_now(),
                            "machine": _common.machine_info()}
  for part in parts:
    report[part], seconds = _common.timed(lambda: globals()[part](args))
    _common.log(f"[{part}] done in {seconds:.0f}s")
  report["wall_seconds"] = round(time.perf_counter() - wall, 1)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
