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
forward-backward passes put the ratio near 2.0, a little under it because the rest of
the step (the update, the non-finite guard, metrics) runs once in both; the target is
lightsam / base <= 2.1.
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # sets up sys.path; must precede the package imports

import _paired

from alphadecay_jax import optimizers
from alphadecay_jax.transforms import sam as sam_lib

TARGET = 2.1
VARIANTS = {"base_adagrad_norm": "bench_adagrad_norm", "lightsam": "lightsam",
            "adamw": "adamw", "sam_adamw": "sam"}


def _adagrad_norm(opt, schedule):
  return sam_lib.adaptive_descent(schedule, "adagrad_norm", eps=opt.eps)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="cpu_10m")
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  optimizers.BUILDERS["bench_adagrad_norm"] = _adagrad_norm  # this process only

  wall = time.perf_counter()
  configs = {}
  for label, name in VARIANTS.items():
    configs[label] = _common.load_config(args.config)
    configs[label].optimizer.name = name
  out = _paired.paired_step_times(configs, args.rounds, args.warmup)
  times = out.pop("times")

  def ratio(a: str, b: str) -> float:
    return _paired.median_ratio(times, a, b)

  lightsam_ratio = ratio("lightsam", "base_adagrad_norm")
  config = configs["lightsam"]
  print(json.dumps({
      "benchmark": "sam_step_time", "date": _common.utc_now(),
      "config": _common.config_label(args.config),
      "batch_size": config.batch_size, "seq_len": config.seq_len,
      "rounds": args.rounds,
      "ratio_lightsam_to_adagrad_norm": lightsam_ratio,
      "ratio_lightsam_to_adamw": ratio("lightsam", "adamw"),
      "ratio_sam_adamw_to_adamw": ratio("sam_adamw", "adamw"),
      "target_ratio": TARGET, "meets_target": lightsam_ratio <= TARGET,
      "wall_seconds": round(time.perf_counter() - wall, 1),
      "machine": _common.machine_info(), **out}))


if __name__ == "__main__":
  main()
