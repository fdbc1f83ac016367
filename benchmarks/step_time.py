r"""Train-step time and achieved model GFLOP/s on this machine, vs a float32 matmul.

  /work/venv/bin/python benchmarks/step_time.py                 # default + cpu_10m
  /work/venv/bin/python benchmarks/step_time.py --configs cpu_10m --steps 20

Prints ONE JSON line on stdout (progress goes to stderr). For each config: the real
jitted train step (`train_state.jit_train_step`, donated state, 1-device mesh) on
synthetic int32 batches already on the device, so data loading is not timed.
Compile time is lower + compile of that step. Step time is the median over the timed
steps (after warm-up) of the wall time of one call up to `block_until_ready` on its
loss. Model FLOPs follow `metrics.flops_per_token` (6 x matmul params + causal
attention, forward + backward).

`ratio_to_matmul` divides the achieved model GFLOP/s by the GFLOP/s of a jitted
float32 2048 x 2048 @ 2048 x 2048 matmul (2 n^3 FLOPs) timed in this same process,
before and after the train steps (the median of all those runs is the reference).
`ratio_to_matmul_paired` instead pairs each timed step with one matmul run just before
it. Target: ratio >= 0.5 for configs/cpu_10m.py (`target_10m_ratio`).

The cores may be shared: `foreign_cpu_fraction` (other processes' share of all cores
during the timed steps, from /proc/stat) says how far to trust the figures. Contention
hurts the perfectly parallel matmul more than the step, so it inflates the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import _common  # sets up sys.path; must precede the package imports

import jax
import jax.numpy as jnp
import numpy as np

from alphadecay_jax import metrics as metrics_lib
from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts

TARGET_10M_RATIO = 0.5
CHAR_VOCAB = 80  # embedded Shakespeare, character tokenizer (used when model.vocab_size=0)


class Matmul:
  """A jitted float32 n x n @ n x n matmul; `rate()` times one call in GFLOP/s."""

  def __init__(self, n: int, warmup: int = 3):
    keys = jax.random.split(jax.random.PRNGKey(0))
    self.n = n
    self.a = jax.random.normal(keys[0], (n, n), jnp.float32)
    self.b = jax.random.normal(keys[1], (n, n), jnp.float32)
    self.fn = jax.jit(jnp.matmul)
    for _ in range(warmup):
      self.fn(self.a, self.b).block_until_ready()

  def rate(self) -> float:
    start = time.perf_counter()
    self.fn(self.a, self.b).block_until_ready()
    return 2.0 * self.n ** 3 / (time.perf_counter() - start) / 1e9

  def rates(self, runs: int) -> list[float]:
    return [self.rate() for _ in range(runs)]


def synthetic_batches(count: int, batch_size: int, seq_len: int, vocab: int,
                      sharding: Any, seed: int = 0) -> list[dict]:
  """`count` distinct random int32 batches, placed on the mesh ahead of time."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    tokens = rng.integers(0, vocab, size=(batch_size, seq_len + 1), dtype=np.int32)
    batches.append(sharding_lib.put_batch(
        {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, sharding))
  return batches


def bench_config(name: str, steps: int | None, warmup: int, budget_seconds: float,
                 max_auto_steps: int, matmul: Matmul) -> dict[str, Any]:
  """Compiles and times the real train step of one config on a 1-device mesh.

  One reference matmul runs just before each timed step (outside its timing), so
  each step has a same-moment matmul rate: `ratio_to_matmul_paired` is the median of
  the per-step ratios and is robust to load that comes and goes on a shared machine.
  """
  config = _common.load_config(name)
  model_cfg = train_lib.model_config(config, CHAR_VOCAB)
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  state = ts.create_state(spec, model_cfg, tx, config.seed)
  batches = synthetic_batches(4, config.batch_size, config.seq_len, model_cfg.vocab_size,
                              sharding_lib.batch_sharding(mesh))
  step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)

  lowered, lower_s = _common.timed(lambda: step_fn.lower(state, batches[0]))
  compiled, compile_s = _common.timed(lowered.compile)
  _common.log(f"[{name}] lower {lower_s:.2f}s compile {compile_s:.2f}s")

  def one_step(i: int) -> float:
    nonlocal state
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    metrics["train/loss"].block_until_ready()
    return time.perf_counter() - start

  for i in range(warmup):
    one_step(i)
  times: list[float] = []
  paired: list[float] = []
  monitor = _common.CpuMonitor()
  begin = time.perf_counter()
  while True:
    paired.append(matmul.rate())
    times.append(one_step(len(times)))
    if steps is not None:
      if len(times) >= steps:
        break
    elif len(times) >= max_auto_steps or (
        len(times) >= 5 and time.perf_counter() - begin >= budget_seconds):
      break

  load = monitor.stop()
  tokens = config.batch_size * config.seq_len
  fpt = metrics_lib.flops_per_token(model_cfg, config.seq_len)
  step_s = _common.median(times)
  counts = model_lib.param_count(model_cfg)
  result = {
      "config": _common.config_path(name).replace(_common.REPO_ROOT + "/", ""),
      "params": counts["total"],
      "params_non_embedding": counts["non_embedding"],
      "d_model": model_cfg.d_model, "n_layers": model_cfg.n_layers,
      "vocab_size": model_cfg.vocab_size, "compute_dtype": model_cfg.compute_dtype,
      "remat": model_cfg.remat, "optimizer": config.optimizer.name,
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "tokens_per_step": tokens,
      "flops_per_token": fpt,
      "lower_seconds": round(lower_s, 3),
      "compile_seconds": round(compile_s, 3),
      "warmup_steps": warmup,
      "timed_steps": len(times),
      "median_seconds_per_step": step_s,
      "min_seconds_per_step": min(times),
      "max_seconds_per_step": max(times),
      "tokens_per_second": tokens / step_s,
      "model_gflops_per_second": fpt * tokens / step_s / 1e9,
      "paired_matmul_gflops_per_second": _common.median(paired),
      "ratio_to_matmul_paired": _common.median(
          [fpt * tokens / t / 1e9 / m for t, m in zip(times, paired)]),
      **load,
  }
  _common.log(f"[{name}] {len(times)} steps, median {step_s:.4f}s/step, "
              f"{result['model_gflops_per_second']:.1f} model GFLOP/s")
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="default,cpu_10m",
                      help="comma-separated config names or paths (default: %(default)s)")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per config; default: at least 5 and until "
                           "--budget_seconds of timed steps (at most --max_auto_steps)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps (>= 2)")
  parser.add_argument("--budget_seconds", type=float, default=25.0)
  parser.add_argument("--max_auto_steps", type=int, default=60)
  parser.add_argument("--matmul_n", type=int, default=2048)
  parser.add_argument("--matmul_runs", type=int, default=10,
                      help="timed matmuls before and again after the train steps")
  args = parser.parse_args()
  if args.warmup < 2:
    parser.error("--warmup must be >= 2")
  if args.steps is not None and args.steps < 1:
    parser.error("--steps must be >= 1")

  wall = time.perf_counter()
  monitor = _common.CpuMonitor()
  matmul = Matmul(args.matmul_n)
  before = matmul.rates(args.matmul_runs)
  _common.log(f"matmul {args.matmul_n}: median {_common.median(before):.1f} GFLOP/s")
  results = {}
  for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
    results[_common.config_label(name)] = bench_config(
        name, args.steps, args.warmup, args.budget_seconds, args.max_auto_steps, matmul)
  after = matmul.rates(args.matmul_runs)
  _common.log(f"matmul {args.matmul_n} (after): median {_common.median(after):.1f} GFLOP/s")
  reference = _common.median(before + after)
  for result in results.values():
    result["ratio_to_matmul"] = result["model_gflops_per_second"] / reference

  report = {
      "benchmark": "step_time",
      "date": _common.utc_now(),
      "machine": _common.machine_info(),
      "matmul": {"n": args.matmul_n, "dtype": "float32",
                 "gflops_per_second": reference,
                 "gflops_per_second_before": _common.median(before),
                 "gflops_per_second_after": _common.median(after),
                 "runs": len(before) + len(after)},
      "configs": results,
      "target_10m_ratio": TARGET_10M_RATIO,
      "wall_seconds": round(time.perf_counter() - wall, 1),
      "whole_run_load": monitor.stop(),
      "note": "foreign_cpu_fraction > ~0.1 means other processes shared the cores: "
              "rates are then low and the ratios unreliable (rerun on a quiet machine)",
  }
  if "cpu_10m" in results:
    ten = results["cpu_10m"]
    quiet = ten["foreign_cpu_fraction"] is not None and ten["foreign_cpu_fraction"] < 0.1
    report["ratio_10m"] = ten["ratio_to_matmul"]
    report["quiet_machine_10m"] = quiet
    # Undecided (null) when other processes shared the cores: see "note".
    report["meets_10m_target"] = (ten["ratio_to_matmul"] >= TARGET_10M_RATIO) if quiet else None
  print(json.dumps(report))


if __name__ == "__main__":
  main()
