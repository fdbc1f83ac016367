r"""SinkGD (arXiv 2502.06742) on the default ~1.2M-parameter Shakespeare model, CPU.

Hidden matrices get stateless row/column-normalised updates, the rest AdamW
(transforms/multinorm.py); everything else as configs/default.py, for comparison:

  python -m alphadecay_jax.train --config configs/sinkgd_shakespeare.py --workdir /tmp/sinkgd
  python -m alphadecay_jax.train --config configs/sinkgd_shakespeare.py --workdir /tmp/swan \
      --config.optimizer.name=swan
"""

import importlib.util
import os


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("_default_config", path)
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)
  config = default.get_config()
  config.optimizer.name = "sinkgd"
  # Hidden matrices at 1e-3 (the SinkGD update has RMS 1), the rest AdamW at 3e-3. Seed 0,
  # 400 steps: matrix_lr_scale 0.33 -> eval loss 1.879, 1.0 -> 1.941 (AdamW: 1.888).
  config.optimizer.sinkgd.update(num_iters=5, matrix_lr_scale=0.33, adam_lr_scale=1.0)
  return config
