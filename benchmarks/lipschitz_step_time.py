r"""Step time of Muon + spectral soft cap over Muon alone (arXiv 2507.13338), ~10M CPU config.

  /work/venv/bin/python benchmarks/lipschitz_step_time.py                # configs/cpu_10m.py
  /work/venv/bin/python benchmarks/lipschitz_step_time.py --steps 20 --projections soft_cap,hard_cap

Prints ONE JSON line on stdout (progress on stderr). Builds the real jitted train step
(`train_state.jit_train_step`, donated state, 1-device mesh, synthetic batches already
on the device) of the config with optimizer.name = muon, once without projection and
once per projection (hidden matrices capped at w_max in RMS->RMS units), compiles them,
then times them *interleaved* (one step of each variant per round) so load from other
processes hits all variants alike. Reports per-variant median step time and
`ratio_<projection>` = median over rounds of (projected step / Muon step) in the same
round. Target: soft cap ratio <= 1.3. `foreign_cpu_fraction` says how busy the
shared cores were.
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # sets up sys.path; must precede the package imports

import jax

from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts
from step_time import CHAR_VOCAB, synthetic_batches

TARGET_SOFT_CAP_RATIO = 1.3


def build(config, projection: str, mesh, batches):
  config = config.copy_and_resolve_references()
  config.optimizer.lipschitz.projection = projection
  model_cfg = train_lib.model_config(config, CHAR_VOCAB)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  state = ts.create_state(spec, model_cfg, tx, config.seed)
  step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
  compiled, seconds = _common.timed(lambda: step_fn.lower(state, batches[0]).compile())
  _common.log(f"[{projection}] compile {seconds:.1f}s")
  return {"state": state, "fn": compiled, "compile_seconds": round(seconds, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="cpu_10m")
  parser.add_argument("--projections", default="soft_cap")
  parser.add_argument("--steps", type=int, default=12, help="timed rounds")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--learning_rate", type=float, default=0.02, help="Muon peak lr")
  parser.add_argument("--w_max", type=float, default=1.0)
  args = parser.parse_args()
  wall = time.perf_counter()

  config = _common.load_config(args.config)
  config.optimizer.update(name="muon", learning_rate=args.learning_rate)
  config.optimizer.muon.adam_lr_scale = 0.05
  config.optimizer.lipschitz.w_max = args.w_max
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  batches = synthetic_batches(4, config.batch_size, config.seq_len, CHAR_VOCAB,
                              sharding_lib.batch_sharding(mesh))
  names = ["none"] + [p.strip() for p in args.projections.split(",") if p.strip()]
  variants = {name: build(config, name, mesh, batches) for name in names}

  def one_step(v: dict, i: int) -> float:
    start = time.perf_counter()
    v["state"], metrics = v["fn"](v["state"], batches[i % len(batches)])
    metrics["train/loss"].block_until_ready()
    return time.perf_counter() - start

  for i in range(args.warmup):
    for v in variants.values():
      one_step(v, i)
  times = {name: [] for name in names}
  monitor = _common.CpuMonitor()
  for i in range(args.steps):
    for name in (names if i % 2 == 0 else names[::-1]):  # alternate the order
      times[name].append(one_step(variants[name], i))
  load = monitor.stop()

  model_cfg = train_lib.model_config(config, CHAR_VOCAB)
  report = {
      "benchmark": "lipschitz_step_time",
      "date": _common.utc_now(),
      "machine": _common.machine_info(),
      "config": _common.config_path(args.config).replace(_common.REPO_ROOT + "/", ""),
      "params": model_lib.param_count(model_cfg)["total"],
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "optimizer": "muon (optax.contrib.muon, dion coefficients)",
      "w_max": args.w_max, "timed_rounds": args.steps,
      "median_seconds_per_step": {n: _common.median(t) for n, t in times.items()},
      "compile_seconds": {n: v["compile_seconds"] for n, v in variants.items()},
      **load,
  }
  for name in names[1:]:
    report[f"ratio_{name}"] = _common.median(
        [t / base for t, base in zip(times[name], times["none"])])
    report[f"ratio_of_medians_{name}"] = (report["median_seconds_per_step"][name]
                                          / report["median_seconds_per_step"]["none"])
  if "soft_cap" in names:
    report["target_soft_cap_ratio"] = TARGET_SOFT_CAP_RATIO
    report["meets_target"] = report["ratio_soft_cap"] <= TARGET_SOFT_CAP_RATIO
  report["wall_seconds"] = round(time.perf_counter() - wall, 1)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
