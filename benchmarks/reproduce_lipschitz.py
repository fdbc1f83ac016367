r"""2-Lipschitz transformer vs its unconstrained twin on Shakespeare characters, fixed CPU budget.

  /work/venv/bin/python benchmarks/reproduce_lipschitz.py                 # ~10-15 min, 2 cores
  /work/venv/bin/python benchmarks/reproduce_lipschitz.py --steps 60      # quicker

Trains configs/lipschitz_shakespeare.py (Muon + soft cap w_max 1 on hidden matrices,
exact cap 2.28 on the head, token vectors RMS <= 1: certified bound <= 2) and
configs/lipschitz_shakespeare_unconstrained.py (same model and optimizer, no
projections) for the same number of steps with the real trainer, then reports each
run's validation character accuracy and loss, the certified Lipschitz bound
(`model.lipschitz_bound`, exact spectral norms) and the compute used (steps, tokens,
model FLOPs by `metrics.flops_per_token`, wall seconds). The paper (arXiv 2507.13338)
reports 60% validation accuracy for its 2-Lipschitz model after 2000 steps of batch
512 x context 256 (~262M tokens); this budget is a few hundred thousand tokens.
Prints ONE JSON line on stdout; trainer output goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time

import _common  # sets up sys.path; must precede the package imports

from alphadecay_jax import metrics as metrics_lib
from alphadecay_jax import model as model_lib
from alphadecay_jax import train as train_lib

CONFIGS = ("lipschitz_shakespeare", "lipschitz_shakespeare_unconstrained")
PAPER = {"val_accuracy": 0.60, "bound": 2.0, "steps": 2000, "batch_size": 512,
         "seq_len": 256, "d_model": 256, "n_layers": 3}


def run(name: str, args: argparse.Namespace) -> dict:
  config = _common.load_config(name)
  config.update(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                eval_every=args.steps, log_every=max(1, args.steps // 10),
                checkpoint_every=0, progress_bar=False, seed=args.seed)
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, args.steps)
  config.data.eval_batches = args.eval_batches
  monitor = _common.CpuMonitor()
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):
    result, wall = _common.timed(lambda: train_lib.train(config, workdir))
  model_cfg = train_lib.model_config(config, 65)
  tokens = args.steps * args.batch_size * args.seq_len
  lip = config.optimizer.lipschitz
  out = {
      "config": f"configs/{name}.py",
      "params": model_lib.param_count(model_cfg)["total"],
      "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
      "train_tokens": tokens,
      "train_model_flops": tokens * metrics_lib.flops_per_token(model_cfg, args.seq_len),
      "wall_seconds": round(wall, 1),
      "val_accuracy": result.eval_metrics["eval/accuracy"],
      "val_loss": result.eval_metrics["eval/loss"],
      "lipschitz_bound": result.eval_metrics["lipschitz_bound"],
      "projection": lip.projection,
      **monitor.stop(),
  }
  if lip.projection != "none":
    out["certified_target"] = model_lib.bound_at_caps(
        model_cfg, lip.w_max, lip.head_w_max, lip.embed_max_rms)
  _common.log(f"[{name}] {json.dumps(out)}")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--eval_batches", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  start = time.perf_counter()
  runs = {name: run(name, args) for name in CONFIGS}
  constrained, free = (runs[n] for n in CONFIGS)
  print(json.dumps({
      "benchmark": "reproduce_lipschitz",
      "date": _common.utc_now(),
      "machine": _common.machine_info(),
      "runs": runs,
      "constrained_bound_within_target": constrained["lipschitz_bound"]
                                         <= constrained["certified_target"] * (1 + 1e-3),
      "accuracy_gap": free["val_accuracy"] - constrained["val_accuracy"],
      "paper": PAPER,
      "wall_seconds": round(time.perf_counter() - start, 1),
  }))


if __name__ == "__main__":
  main()
