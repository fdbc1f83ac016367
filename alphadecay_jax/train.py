r"""Training loop and entry point.

  python -m alphadecay_jax.train --config configs/default.py --workdir /tmp/run \
      --config.steps=2000 --config.optimizer.learning_rate=3e-3

The run resumes automatically from the newest readable checkpoint in `workdir`
(same data order), checkpoints on SIGTERM, and writes `workdir/metrics.jsonl` and
TensorBoard events. See README.md for multi-device and multi-host use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from alphadecay_jax import checkpoint as checkpoint_lib
from alphadecay_jax import data as data_lib
from alphadecay_jax import distributed
from alphadecay_jax import metrics as metrics_lib
from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import tokenizers
from alphadecay_jax import train_state as ts

log = logging.getLogger(__name__)


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    process_count: int = 1) -> None:
  """Checks every user-settable value before anything is compiled or loaded."""
  for key in ("steps", "batch_size", "seq_len", "grad_accum_steps", "log_every",
              "eval_every", "max_nonfinite_in_a_row"):
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{key}={value!r} must be a positive integer")
  if config.checkpoint_every < 0:
    raise ValueError(f"checkpoint_every={config.checkpoint_every} must be >= 0 "
                     "(0 saves only at the end)")
  optimizers.validate_optimizer_config(config.optimizer, config.steps)
  data_lib.validate_data_config(config.data)
  if config.seq_len > config.model.max_seq_len:
    raise ValueError(f"seq_len={config.seq_len} exceeds model.max_seq_len="
                     f"{config.model.max_seq_len}")
  mesh = sharding_lib.mesh_shape(config.mesh, num_devices)
  dp = mesh[0] * mesh[1]
  if config.batch_size % dp:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                     f"data-parallel size {dp} (mesh.data x mesh.fsdp)")
  if config.batch_size % process_count:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                     f"{process_count} processes")
  if config.batch_size % (config.grad_accum_steps * dp):
    raise ValueError(f"batch_size={config.batch_size} must be divisible by "
                     f"grad_accum_steps={config.grad_accum_steps} x data-parallel "
                     f"size {dp}")


def model_config(config: ml_collections.ConfigDict,
                 tokenizer_vocab: int) -> model_lib.ModelConfig:
  """model.vocab_size = 0 takes the tokenizer's vocabulary rounded up to 128 (MXU-friendly)."""
  vocab = config.model.vocab_size or int(math.ceil(tokenizer_vocab / 128) * 128)
  if vocab < tokenizer_vocab:
    raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's "
                     f"vocabulary ({tokenizer_vocab})")
  cfg = model_lib.ModelConfig.from_config(config.model, vocab_size=vocab)
  model_lib.validate_model_config(cfg)
  return cfg


class _Averages:
  """Host-side means of the per-step scalars between two log steps; arrays (e.g.
  per-module statistics from optimizer states) keep their latest value."""

  def __init__(self):
    self.sums, self.latest, self.n = {}, {}, 0

  def add(self, metrics: dict) -> None:
    for k, v in metrics.items():
      if np.ndim(v) == 0:
        self.sums[k] = self.sums.get(k, 0.0) + float(v)
      else:
        self.latest[k] = np.asarray(v)
    self.n += 1

  def pop(self) -> dict:
    out = {k: v / self.n for k, v in self.sums.items()} if self.n else {}
    out.update(self.latest)
    self.sums, self.latest, self.n = {}, {}, 0
    return out


class RunResult(NamedTuple):
  step: int                  # last completed step
  eval_metrics: dict         # last evaluation ({} if none ran)
  state: ts.TrainState       # final (sharded) train state


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as `--config path[:arg]` would load it."""
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_alphadecay_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_at: int | None = None) -> RunResult:
  """Trains (or resumes) per `config` in `workdir`.

  `stop_at` ends the run after that step with a checkpoint, as a preemption would
  (used by tests to split one run in two).
  """
  validate_config(config, jax.device_count(), jax.process_count())
  is_main = jax.process_index() == 0
  mesh = sharding_lib.make_mesh(config.mesh)
  tokenizer = tokenizers.build_tokenizer(config.data)
  model_cfg = model_config(config, tokenizer.vocab_size)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)

  data_kwargs = dict(tokenizer=tokenizer, batch_size=config.batch_size,
                     seq_len=config.seq_len, process_index=jax.process_index(),
                     process_count=jax.process_count())
  train_iter = data_lib.make_train_iterator(config.data, seed=config.seed, **data_kwargs)
  batch_sh = sharding_lib.batch_sharding(mesh)
  eval_batches = [sharding_lib.put_batch(b, batch_sh)
                  for b in data_lib.make_eval_batches(config.data, **data_kwargs)]

  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), save_every=config.checkpoint_every,
      keep=config.keep_checkpoints, async_save=config.async_checkpointing)
  restored = ckpt.restore_latest(spec.abstract, train_iter)
  if restored is None:
    state, start = ts.create_state(spec, model_cfg, tx, config.seed), 0
  else:
    state, start = restored
  config_json = json.loads(config.to_json_best_effort())

  writer = metrics_lib.MetricsWriter(workdir, total_steps=config.steps, start_step=start,
                                     enabled=is_main, progress=config.progress_bar)
  counts = model_lib.param_count(model_cfg)
  tokens_per_step = config.batch_size * config.seq_len
  throughput = metrics_lib.Throughput(
      tokens_per_step, tokens_per_step * metrics_lib.flops_per_token(model_cfg, config.seq_len),
      config.peak_tflops_per_device * 1e12, jax.device_count())
  opt_bytes = optimizers.state_bytes(spec.abstract.opt_state)
  writer.print(f"{'resumed at' if start else 'starting'} step {start}/{config.steps}; "
               f"params {counts['total']:,} (non-embedding {counts['non_embedding']:,}); "
               f"optimizer {config.optimizer.name} state {opt_bytes / 2**20:,.2f} MiB; "
               f"mesh {dict(mesh.shape)}; vocab {model_cfg.vocab_size}")
  writer.write(start, {"params": counts["total"], "optimizer_state_bytes": opt_bytes})

  step_fn = ts.jit_train_step(spec, tx, mesh, config.grad_accum_steps, schedule)
  eval_fn = ts.jit_eval_step(spec, mesh)
  preempted = checkpoint_lib.PreemptionFlag()
  averages, pending, last_eval, bar_extras = _Averages(), None, {}, {}
  step = start

  def finish_step(step_done: int, metrics: dict, params: Any = None) -> None:
    """Host side of a step. Runs one step late (so the device never waits for Python)
    except on eval and checkpoint steps, which pass the step's own `params`."""
    nonlocal last_eval
    metrics = jax.device_get(metrics)
    if int(metrics.pop("nonfinite_in_a_row")) >= config.max_nonfinite_in_a_row:
      raise FloatingPointError(
          f"{config.max_nonfinite_in_a_row} non-finite losses or gradients in a row at "
          f"step {step_done}; those updates were skipped")
    averages.add(metrics)
    record = {}
    if step_done % config.log_every == 0 or step_done == config.steps:
      record.update(averages.pop(), **throughput.measure(step_done))
      if "perf/tokens_per_second" in record:  # the bar shows the latest measured rate
        bar_extras["tok/s"] = record["perf/tokens_per_second"]
    writer.progress(step_done, {"loss": float(metrics["train/loss"]), **bar_extras})
    if params is not None and (step_done % config.eval_every == 0
                               or step_done == config.steps):
      last_eval = ts.evaluate(eval_fn, params, eval_batches)
      last_eval.update(model_lib.lipschitz_metrics(params, model_cfg))  # {} unless lipschitz
      record.update(last_eval)
      writer.print(f"step {step_done}: eval loss {last_eval['eval/loss']:.4f} "
                   f"accuracy {last_eval['eval/accuracy']:.4f}")
      throughput.reset(step_done)  # eval time is not training throughput
    if record:
      writer.write(step_done, record)

  throughput.reset(start)
  try:
    while step < config.steps:
      batch = sharding_lib.put_batch(next(train_iter), batch_sh)
      state, metrics = step_fn(state, batch)
      step += 1
      if pending is not None:
        finish_step(*pending)
        pending = None
      stopping = step == stop_at or preempted.is_set()
      saving = ckpt.should_save(step) or stopping or step == config.steps
      if saving or step % config.eval_every == 0:
        finish_step(step, metrics, state.params)
      else:
        pending = (step, metrics)
      if saving:
        ckpt.save(step, state, train_iter, config_json)
      if stopping:
        writer.print(f"stopping at step {step} (checkpoint saved)")
        break
    if not last_eval and step == config.steps:  # resumed a finished run: report it
      last_eval = ts.evaluate(eval_fn, state.params, eval_batches)
  finally:
    ckpt.close()
    writer.close()
    preempted.restore_handlers()
  return RunResult(step, last_eval, state)


def default_run_config() -> ml_collections.ConfigDict:
  """Trainer keys shared by every config file (the files override what they need)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.steps = 1000
  config.batch_size = 32
  config.seq_len = 128
  config.grad_accum_steps = 1
  config.log_every = 10
  config.eval_every = 200
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  config.max_nonfinite_in_a_row = 10
  config.peak_tflops_per_device = 0.0   # 0: report achieved GFLOP/s only (CPU)
  config.progress_bar = True
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=0, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=688,
      max_seq_len=1024, rope_theta=10_000.0, norm_eps=1e-5, init_std=0.02,
      compute_dtype="float32", remat="none"))
  config.optimizer = optimizers.default_optimizer_config()
  config.data = data_lib.default_data_config()
  return config


def main(argv: list[str]) -> None:
  del argv
  from absl import flags, logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
  distributed.initialize()  # before any device use; a no-op for a single process
  config = flags.FLAGS.config
  result = train(config, flags.FLAGS.workdir)
  final = result.eval_metrics
  if jax.process_index() == 0 and final:
    print(f"final step {result.step}: validation loss {final['eval/loss']:.4f}, "
          f"perplexity {final['eval/perplexity']:.2f}, accuracy {final['eval/accuracy']:.4f}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
