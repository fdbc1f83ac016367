r"""Parameter-agnosticism of LightSAM: final validation loss over a rho x learning-rate grid.

  /work/venv/bin/python benchmarks/sam_agnosticism.py               # ~15 min on 2 cores
  /work/venv/bin/python benchmarks/sam_agnosticism.py --steps 40 --lrs 1 --rhos 0.05

Prints ONE JSON line on stdout (progress on stderr). Three methods share one descent
optimizer (`--family adagrad_norm`: AdaGrad-Norm, LightSAM's published variant;
`--family adam`: Adam, LightSAM's inferred Adam variant), each trained by the real
trainer (`train.train`) on a shrunk configs/default.py (short runs, constant learning
rate, no warmup, no clipping, so nothing hides a divergence):
  lightsam   name=lightsam, sam.variant=family
  optax_sam  optax.contrib.sam(base, chain(normalize(), sgd(rho)), sync_period=2,
             opaque_mode=True): the same two gradient evaluations per step
  base       the descent optimizer alone (no rho)
Grid: rho in --rhos x learning rate in --lrs (two decades). A run *fails* if the
trainer stops on non-finite values, or its final validation loss is non-finite or no
better than a uniform guess over the 65 corpus characters (ln 65 = 4.17). `spread` is
max - min of the final validation loss over the runs that did not fail (null if < 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time

import _common  # sets up sys.path; must precede the package imports

import optax

from alphadecay_jax import optimizers
from alphadecay_jax import train as train_lib
from alphadecay_jax.transforms import sam as sam_lib

UNIFORM_LOSS = math.log(65)


def _base(opt, schedule):
  return sam_lib.adaptive_descent(schedule, opt.sam.variant, opt.b1, opt.b2, opt.eps)


def _optax_sam(opt, schedule):
  adv = optax.chain(optax.contrib.normalize(), optax.sgd(opt.sam.rho))
  return optax.contrib.sam(_base(opt, schedule), adv, sync_period=2, opaque_mode=True)


def run_one(method: str, family: str, lr: float, rho: float | None, args) -> dict:
  config = _common.load_config("default")
  config.update(steps=args.steps, batch_size=16, seq_len=64, log_every=args.steps,
                eval_every=args.steps, checkpoint_every=0, async_checkpointing=False,
                progress_bar=False, max_nonfinite_in_a_row=3, seed=0)
  config.model.update(d_model=args.d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                      d_ff=args.d_model * 8 // 3)
  config.data.update(eval_batches=8)
  config.optimizer.update(name={"lightsam": "lightsam", "optax_sam": "bench_optax_sam",
                                "base": "bench_base"}[method],
                          learning_rate=lr, schedule="constant", warmup_steps=0,
                          grad_clip_norm=0.0, weight_decay=0.0, b2=0.99)
  config.optimizer.sam.update(variant=family, rho=rho if rho is not None else 0.0)
  start = time.perf_counter()
  loss, stopped = None, False
  # The trainer prints progress on stdout; stdout must carry only the one JSON line.
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):
    try:
      loss = train_lib.train(config, workdir).eval_metrics["eval/loss"]
    except FloatingPointError:
      stopped = True
  failed = stopped or loss is None or not math.isfinite(loss) or loss >= UNIFORM_LOSS
  out = {"method": method, "lr": lr, "rho": rho, "eval_loss": loss,
         "stopped_nonfinite": stopped, "failed": failed,
         "seconds": round(time.perf_counter() - start, 1)}
  _common.log(json.dumps(out))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--family", default="adagrad_norm", choices=("adagrad_norm", "adam"))
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--d_model", type=int, default=96)
  parser.add_argument("--rhos", default="0.01,0.05,0.1,0.5")
  parser.add_argument("--lrs", default=None,
                      help="comma-separated; default 0.1,1,10 (adagrad_norm) or "
                           "1e-4,1e-3,1e-2 (adam)")
  parser.add_argument("--methods", default="lightsam,optax_sam,base")
  args = parser.parse_args()
  lrs = [float(x) for x in (args.lrs or {"adagrad_norm": "0.1,1,10",
                                        "adam": "1e-4,1e-3,1e-2"}[args.family]).split(",")]
  rhos = [float(x) for x in args.rhos.split(",")]
  optimizers.BUILDERS["bench_base"] = _base          # this process only
  optimizers.BUILDERS["bench_optax_sam"] = _optax_sam

  wall, monitor = time.perf_counter(), _common.CpuMonitor()
  runs, table = [], {}
  for method in args.methods.split(","):
    grid = [(lr, None) for lr in lrs] if method == "base" else [
        (lr, rho) for rho in rhos for lr in lrs]
    results = [run_one(method, args.family, lr, rho, args) for lr, rho in grid]
    runs += results
    ok = [r["eval_loss"] for r in results if not r["failed"]]
    table[method] = {"runs": len(results), "failures": len(results) - len(ok),
                     "spread": (max(ok) - min(ok)) if len(ok) >= 2 else None,
                     "best": min(ok) if ok else None, "worst_ok": max(ok) if ok else None}
  print(json.dumps({
      "benchmark": "sam_agnosticism", "date": _common.utc_now(),
      "family": args.family, "steps": args.steps, "d_model": args.d_model,
      "lrs": lrs, "rhos": rhos, "table": table, "runs": runs,
      "wall_seconds": round(time.perf_counter() - wall, 1),
      "machine": _common.machine_info(), "load": monitor.stop()}))


if __name__ == "__main__":
  main()
