r"""Uniform vs AlphaDecay vs no weight decay at matched strengths, CPU scale, 3 seeds.

  python benchmarks/reproduce_alphadecay.py [--seeds 0 1 2] [--steps 400] [--out DIR]

Runs every variant of configs/alphadecay_shakespeare.py (none; uniform and AlphaDecay
at decoupled 0.1 / 0.05 / 0.01) for each seed, appending one JSON line per finished run
to DIR/runs.jsonl (a rerun skips finished runs, so the sweep can be interrupted), then
writes DIR/alphadecay_shakespeare.md (final validation loss, mean +- std over seeds)
and prints ONE JSON line with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import _common  # sets up sys.path

from alphadecay_jax import train as train_lib

CONFIG = os.path.join(_common.REPO_ROOT, "configs", "alphadecay_shakespeare.py")
STRENGTHS = (0.1, 0.05, 0.01)


def variants() -> list[str]:
  return ["none"] + [f"{kind},{s}" for s in STRENGTHS for kind in ("uniform", "alphadecay")]


def load_variant(arg: str):
  return train_lib.load_config(f"{CONFIG}:{arg}")


def run_one(arg: str, seed: int, steps: int | None) -> dict:
  config = load_variant(arg)
  config.seed = seed
  config.progress_bar = False
  config.checkpoint_every = 0
  if steps:
    config.steps = steps
    config.eval_every = steps
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
  with tempfile.TemporaryDirectory() as workdir:
    result, seconds = _common.timed(lambda: train_lib.train(config, workdir))
  if result.step != config.steps:  # SIGTERM stopped the run: stop the sweep, record nothing
    raise SystemExit(f"{arg} seed {seed} stopped at step {result.step}; sweep interrupted")
  return {"variant": arg, "seed": seed, "steps": config.steps,
          "eval_loss": result.eval_metrics["eval/loss"],
          "eval_accuracy": result.eval_metrics["eval/accuracy"], "seconds": seconds}


def table(runs: list[dict]) -> tuple[str, dict]:
  by_variant: dict[str, list[dict]] = {}
  for run in runs:
    by_variant.setdefault(run["variant"], []).append(run)
  summary = {}
  lines = ["| decay | strength | runs | val loss (mean +- std) | val accuracy |",
           "|---|---|---|---|---|"]
  for arg in variants():
    rows = by_variant.get(arg, [])
    if not rows:
      continue
    losses = [r["eval_loss"] for r in rows]
    accs = [r["eval_accuracy"] for r in rows]
    std = statistics.stdev(losses) if len(losses) > 1 else 0.0
    kind, _, strength = arg.partition(",")
    summary[arg] = {"mean": statistics.mean(losses), "std": std, "n": len(rows),
                    "accuracy": statistics.mean(accs)}
    lines.append(f"| {kind} | {strength or '0'} | {len(rows)} | "
                 f"{statistics.mean(losses):.4f} +- {std:.4f} | {statistics.mean(accs):.4f} |")
  return "\n".join(lines) + "\n", summary


def paired_table(runs: list[dict]) -> tuple[str, dict]:
  """AlphaDecay minus uniform at each strength, per seed: the two runs of a seed share
  the initial weights and data order, so their difference removes most seed noise."""
  loss = {(r["variant"], r["seed"]): r["eval_loss"] for r in runs}
  lines = ["| strength | seeds | AlphaDecay - uniform, per seed | mean +- std | "
           "AlphaDecay lower in |", "|---|---|---|---|---|"]
  paired = {}
  for arg in variants():
    kind, _, strength = arg.partition(",")
    if kind != "alphadecay":
      continue
    seeds = sorted(s for (v, s) in loss if v == arg and (f"uniform,{strength}", s) in loss)
    diffs = [loss[(arg, s)] - loss[(f"uniform,{strength}", s)] for s in seeds]
    if not diffs:
      continue
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    paired[strength] = {"mean": statistics.mean(diffs), "std": std,
                        "alphadecay_lower": sum(d < 0 for d in diffs), "n": len(diffs)}
    lines.append(f"| {strength} | {len(diffs)} | {', '.join(f'{d:+.4f}' for d in diffs)} | "
                 f"{statistics.mean(diffs):+.4f} +- {std:.4f} | "
                 f"{sum(d < 0 for d in diffs)} of {len(diffs)} |")
  return "\n".join(lines) + "\n", paired


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=None, help="override config.steps")
  parser.add_argument("--out", default=os.path.join(_common.REPO_ROOT, "benchmarks",
                                                    "results"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  log_path = os.path.join(args.out, "alphadecay_runs.jsonl")
  runs = []
  if os.path.exists(log_path):
    runs = [json.loads(line) for line in open(log_path)]
  done = {(r["variant"], r["seed"], r["steps"]) for r in runs}
  for seed in args.seeds:
    for arg in variants():
      steps = args.steps or load_variant(arg).steps
      if (arg, seed, steps) in done:
        continue
      run = run_one(arg, seed, args.steps)
      _common.log(f"[reproduce] {arg} seed {seed}: val loss {run['eval_loss']:.4f}")
      runs.append(run)
      with open(log_path, "a") as f:
        f.write(json.dumps(run) + "\n")
  markdown, summary = table(runs)
  paired_md, paired = paired_table(runs)
  header = (f"# AlphaDecay vs uniform vs no decay (configs/alphadecay_shakespeare.py)\n\n"
            f"{_common.utc_now()}, {_common.machine_info()['platform']}; final validation "
            "loss after each run, mean +- std (sample) over seeds.\n\n")
  paired_header = ("\n## Paired by seed\n\nSame seed = same initial weights and data "
                   "order; the difference cancels most of the seed-to-seed spread.\n\n")
  with open(os.path.join(args.out, "alphadecay_shakespeare.md"), "w") as f:
    f.write(header + markdown + paired_header + paired_md)
  print(json.dumps({"benchmark": "reproduce_alphadecay", "date": _common.utc_now(),
                    "summary": summary, "alphadecay_minus_uniform": paired,
                    "runs": len(runs)}))


if __name__ == "__main__":
  main()
