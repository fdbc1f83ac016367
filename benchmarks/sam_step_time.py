r"""Step time of LightSAM / SAM relative to their base optimizers on configs/cpu_10m.py.

  /work/venv/bin/python benchmarks/sam_step_time.py                # ~5 min on 2 cores
  /work/venv/bin/python benchmarks/sam_step_time.py --config default --rounds 5

Prints ONE JSON line on stdout (progress on stderr). Each variant is the real jitted
train step (`train_state.jit_train_step`, donated state, 1-device mesh) on synthetic
batches already on the device:
  base_adagrad_norm  AdaGrad-Norm alone (LightSAM's own descent, registered here only)
  lightsam           name=lightsam (AdaGrad-Norm variant)
  adamw              the config's AdamW
  sam_adamw          name=sam (normalised SAM perturbation around that AdamW)
The variants run interleaved, one step each per round, so load from other processes
hits them alike; a ratio is the median over rounds of the per-round ratio. Two
forward-backward passes make 2.0 the floor; the target is lightsam / base <= 2.1.
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # sets up sys.path; must precede the package imports

import jax

from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts
from alphadecay_jax.transforms import sam as sam_lib
from step_time import CHAR_VOCAB, synthetic_batches

TARGET = 2.1
VARIANTS = {"base_adagrad_norm": "bench_adagrad_norm", "lightsam": "lightsam",
            "adamw": "adamw", "sam_adamw": "sam"}


def _adagrad_norm(opt, schedule):
  return sam_lib.adaptive_descent(schedule, "adagrad_norm", eps=opt.eps)


def compiled_step(config_name: str, optimizer_name: str):
  config = _common.load_config(config_name)
  config.optimizer.name = optimizer_name
  model_cfg = train_lib.model_config(config, CHAR_VOCAB)
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  state = ts.create_state(spec, model_cfg, tx, config.seed)
  batches = synthetic_batches(2, config.batch_size, config.seq_len, model_cfg.vocab_size,
                              sharding_lib.batch_sharding(mesh))
  step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
  compiled, seconds = _common.timed(lambda: step_fn.lower(state, batches[0]).compile())
  _common.log(f"[{optimizer_name}] compiled in {seconds:.1f}s")
  return {"fn": compiled, "state": state, "batches": batches, "compile_seconds": seconds,
          "config": config}


def run(entry: dict, i: int) -> float:
  start = time.perf_counter()
  entry["state"], metrics = entry["fn"](entry["state"], entry["batches"][i % 2])
  metrics["train/loss"].block_until_ready()
  return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="cpu_10m")
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  optimizers.BUILDERS["bench_adagrad_norm"] = _adagrad_norm  # this process only

  wall = time.perf_counter()
  entries = {k: compiled_step(args.config, v) for k, v in VARIANTS.items()}
  for i in range(args.warmup):
    for entry in entries.values():
      run(entry, i)
  times = {k: [] for k in entries}
  monitor = _common.CpuMonitor()
  for i in range(args.rounds):
    for k, entry in entries.items():
      times[k].append(run(entry, i))
    _common.log(f"round {i}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
  load = monitor.stop()

  def ratio(a: str, b: str) -> float:
    return _common.median([x / y for x, y in zip(times[a], times[b])])

  lightsam_ratio = ratio("lightsam", "base_adagrad_norm")
  config = entries["lightsam"]["config"]
  print(json.dumps({
      "benchmark": "sam_step_time", "date": _common.utc_now(),
      "config": _common.config_label(args.config),
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "rounds": args.rounds,
      "median_seconds_per_step": {k: _common.median(v) for k, v in times.items()},
      "compile_seconds": {k: round(e["compile_seconds"], 2) for k, e in entries.items()},
      "ratio_lightsam_to_adagrad_norm": lightsam_ratio,
      "ratio_lightsam_to_adamw": ratio("lightsam", "adamw"),
      "ratio_sam_adamw_to_adamw": ratio("sam_adamw", "adamw"),
      "target_ratio": TARGET, "meets_target": lightsam_ratio <= TARGET,
      "wall_seconds": round(time.perf_counter() - wall, 1),
      "machine": _common.machine_info(), **load}))


if __name__ == "__main__":
  main()
