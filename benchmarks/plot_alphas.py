r"""Plot AlphaDecay's per-module, per-layer alpha (and decay multiplier) over training.

  python benchmarks/plot_alphas.py WORKDIR [--out WORKDIR/alphas.png]

Reads WORKDIR/metrics.jsonl, as written by a run with optimizer.name=alphadecay_* (keys
`alpha_decay/alpha/<module>` and `alpha_decay/scale/<module>`, one value per layer),
and draws one panel per module: alpha of every layer against the step, plus the final
decay multipliers as a layer x module heatmap.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def read_series(metrics_path: str, prefix: str) -> dict[str, tuple[list[int], np.ndarray]]:
  """{module: (steps, values[step, layer])} for keys `<prefix><module>`."""
  rows: dict[str, dict[int, list[float]]] = {}
  with open(metrics_path) as f:
    for line in f:
      record = json.loads(line)
      for key, value in record.items():
        if key.startswith(prefix):
          rows.setdefault(key[len(prefix):], {})[record["step"]] = np.ravel(value).tolist()
  return {module: (sorted(by_step), np.array([by_step[s] for s in sorted(by_step)]))
          for module, by_step in rows.items()}


def plot(workdir: str, out: str | None = None) -> str:
  """Writes the figure and returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  path = os.path.join(workdir, "metrics.jsonl")
  alphas = read_series(path, "alpha_decay/alpha/")
  scales = read_series(path, "alpha_decay/scale/")
  if not alphas:
    raise ValueError(f"{path} has no alpha_decay/alpha/* metrics (was the optimizer "
                     "alphadecay_adamw or alphadecay_adam_l2?)")
  modules = sorted(alphas)
  fig, axes = plt.subplots(2, (len(modules) + 2) // 2, figsize=(4 * ((len(modules) + 2) // 2), 7))
  axes = axes.ravel()
  for ax, module in zip(axes, modules):
    steps, values = alphas[module]
    for layer in range(values.shape[1]):
      ax.plot(steps, values[:, layer], label=f"layer {layer}",
              color=plt.cm.viridis(layer / max(1, values.shape[1] - 1)))
    ax.set_title(module)
    ax.set_xlabel("step")
    ax.set_ylabel("alpha")
  axes[0].legend(fontsize=7)
  heat = axes[len(modules)]
  final = np.array([scales[m][1][-1] for m in modules]) if scales else None
  if final is not None:
    image = heat.imshow(final.T, aspect="auto", cmap="magma")
    heat.set_xticks(range(len(modules)), modules, rotation=45, ha="right", fontsize=7)
    heat.set_yticks(range(final.shape[1]))
    heat.set_ylabel("layer")
    heat.set_title("final decay multiplier s_i")
    fig.colorbar(image, ax=heat)
  for ax in axes[len(modules) + 1:]:
    ax.axis("off")
  fig.tight_layout()
  out = out or os.path.join(workdir, "alphas.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  print(json.dumps({"figure": plot(args.workdir, args.out)}))


if __name__ == "__main__":
  main()
