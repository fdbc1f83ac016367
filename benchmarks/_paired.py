"""Interleaved step timing of several optimizer configs on one model, in one process.

On a shared, noisy machine only ratios measured side by side mean anything: each
round runs one step of every variant (alternating the order), and the per-round
ratios are summarised by their median.
"""

from __future__ import annotations

import time
from typing import Any

import _common  # sets up sys.path

import jax
import step_time  # benchmarks/step_time.py: synthetic batches, the corpus vocabulary

from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts

def paired_step_times(configs: dict[str, Any], rounds: int, warmup: int = 2,
                      vocab: int = step_time.CHAR_VOCAB) -> dict[str, Any]:
  """Median seconds/step of each config's real jitted train step, interleaved.

  All configs must share model, batch and sequence length (only the optimizer
  differs); batches are synthetic and already on the device.
  """
  first = next(iter(configs.values()))
  mesh = sharding_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  model_cfg = train_lib.model_config(first, vocab)
  batches = step_time.synthetic_batches(4, first.batch_size, first.seq_len,
                                        model_cfg.vocab_size,
                                        sharding_lib.batch_sharding(mesh))
  runners, compile_s = {}, {}
  for label, config in configs.items():
    tx = optimizers.build_optimizer(config.optimizer, config.steps)
    schedule = optimizers.make_schedule(config.optimizer, config.steps)
    spec = ts.state_spec(model_cfg, tx, mesh)
    state = ts.create_state(spec, model_cfg, tx, config.seed)
    step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
    compiled, compile_s[label] = _common.timed(
        lambda: step_fn.lower(state, batches[0]).compile())
    runners[label] = [compiled, state]
    _common.log(f"[paired] {label} compiled in {compile_s[label]:.1f}s")

  def one(label: str, i: int) -> float:
    compiled, state = runners[label]
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    metrics["train/loss"].block_until_ready()
    runners[label][1] = state
    return time.perf_counter() - start

  labels = list(configs)
  for i in range(warmup):
    for label in labels:
      one(label, i)
  times = {label: [] for label in labels}
  monitor = _common.CpuMonitor()
  for i in range(rounds):
    for label in (labels if i % 2 == 0 else labels[::-1]):
      times[label].append(one(label, i))
  return {"times": times,
          "median_seconds_per_step": {k: _common.median(v) for k, v in times.items()},
          "compile_seconds": {k: round(v, 2) for k, v in compile_s.items()},
          **monitor.stop()}


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
  """Median over rounds of the per-round time ratio."""
  return _common.median([a / b for a, b in zip(times[numerator], times[denominator])])
