r"""Unconstrained twin of configs/lipschitz_shakespeare.py: same model, data and Muon/Adam
optimizer, no projections (its `lipschitz_bound` is still logged, and is large).

  python -m alphadecay_jax.train --config configs/lipschitz_shakespeare_unconstrained.py \
      --workdir /tmp/lip_free
"""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lipschitz_shakespeare.py")
  spec = importlib.util.spec_from_file_location("_lipschitz_shakespeare", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.optimizer.lipschitz.update(projection="none", head_w_max=0.0, embed_max_rms=0.0)
  return config
