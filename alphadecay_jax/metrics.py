"""Console progress, metrics.jsonl and TensorBoard writers; analytic FLOPs and MFU.

FLOPs convention (as MaxText / PaLM appendix B): per token, a training step costs
6 * (matmul parameters, i.e. everything except the embedding lookup; the head counts)
plus causal attention 6 * layers * seq_len * d_attn (QK^T and AV: 2 matmuls of
2 * T * d FLOPs each per token forward, x3 for backward, halved for the causal mask).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

import numpy as np
import tqdm

from alphadecay_jax import model as model_lib


def flops_per_token(cfg: model_lib.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward) under the convention above."""
  matmul_params = model_lib.param_count(cfg)["non_embedding"] - _norm_params(cfg)
  attention = 6 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
  return 6.0 * matmul_params + attention


def _norm_params(cfg: model_lib.ModelConfig) -> int:
  if cfg.lipschitz:  # the Lipschitz variant has no norm layers
    return 0
  return (2 * cfg.n_layers + 1) * cfg.d_model


def _scalar(value: Any) -> float | int:
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


class MetricsWriter:
  """Writes metrics from process 0 only: JSONL, TensorBoard and a tqdm progress bar."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               enabled: bool = True, tensorboard: bool = True, progress: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = self._bar = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    if tensorboard:
      import tensorboardX  # deferred: only the writing process needs it
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    # A bar only on a terminal or notebook; logs (CI, SLURM, TPU workers) get plain lines.
    if progress and (sys.stderr.isatty() or "ipykernel" in sys.modules):
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, mininterval=1.0)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """One JSON object per call; every scalar also goes to TensorBoard."""
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    if self._bar is None and "train/loss" in record:
      rate = record.get("perf/tokens_per_second")
      self.print(f"step {step}: loss {record['train/loss']:.4f}"
                 + (f", {rate:,.0f} tokens/s" if rate else ""))
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key == "step":
          continue
        flat = np.ravel(value)  # arrays (per-layer statistics) become key/0, key/1, ...
        if flat.size == 1:
          self._tb.add_scalar(key, float(flat[0]), int(step))
        else:
          for i, v in enumerate(flat):
            self._tb.add_scalar(f"{key}/{i}", float(v), int(step))

  def progress(self, step: int, postfix: Mapping[str, float]) -> None:
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
      self._bar.refresh()

  def print(self, message: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    for handle in (self._bar, self._tb, self._jsonl):
      if handle is not None:
        handle.close()


class Throughput:
  """Tokens/s, achieved model GFLOP/s and MFU over the interval since the last call."""

  def __init__(self, tokens_per_step: int, flops_per_step: float,
               peak_flops_per_second: float, num_devices: int):
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.peak = peak_flops_per_second * num_devices
    self._time, self._step = time.perf_counter(), None

  def reset(self, step: int) -> None:
    self._time, self._step = time.perf_counter(), step

  def measure(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    if self._step is None or step <= self._step:
      self.reset(step)
      return {}
    steps, seconds = step - self._step, now - self._time
    self._time, self._step = now, step
    flops = self.flops_per_step * steps / seconds
    out = {"perf/tokens_per_second": self.tokens_per_step * steps / seconds,
           "perf/model_gflops_per_second": flops / 1e9,
           "perf/seconds_per_step": seconds / steps}
    if self.peak > 0:
      out["perf/mfu"] = flops / self.peak
    return out
