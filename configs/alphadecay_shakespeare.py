r"""AlphaDecay vs uniform vs no weight decay at CPU scale (the paper's comparison, arXiv 2506.14562).

configs/default.py (1.2M params, 400 steps, Shakespeare characters), AdamW with decoupled decay at the paper's
AdamW strengths (0.1 / 0.05 / 0.01), alphas refreshed every 50 of 400 steps (the paper
refreshes 20 times in 10k steps). Pick the variant after the colon:

  python -m alphadecay_jax.train --config configs/alphadecay_shakespeare.py:alphadecay,0.1 --workdir /tmp/ad_0.1
  python -m alphadecay_jax.train --config configs/alphadecay_shakespeare.py:uniform,0.1 --workdir /tmp/uni_0.1
  python -m alphadecay_jax.train --config configs/alphadecay_shakespeare.py:none --workdir /tmp/nodecay

`benchmarks/reproduce_alphadecay.py` runs all seven with three seeds each.
"""

import os

from alphadecay_jax.train import load_config

STRENGTHS = (0.1, 0.05, 0.01)
VARIANTS = ("none", "uniform", "alphadecay")


def get_config(arg: str = "alphadecay,0.1"):
  variant, _, strength = arg.partition(",")
  if variant not in VARIANTS:
    raise ValueError(f"config argument {arg!r}: variant must be one of {VARIANTS}")
  config = load_config(os.path.join(os.path.dirname(__file__), "default.py"))
  config.optimizer.update(
      name="alphadecay_adamw" if variant == "alphadecay" else "adamw",
      weight_decay=0.0 if variant == "none" else float(strength or 0.1))
  config.optimizer.alpha_decay.update(refresh_every=50)
  return config
