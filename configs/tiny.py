r"""A tiny model for smoke tests, CI and notebooks (seconds on a CPU).

  python -m alphadecay_jax.train --config configs/tiny.py --workdir /tmp/tiny
"""

from alphadecay_jax.train import default_run_config


def get_config():
  config = default_run_config()
  config.steps = 20
  config.batch_size = 8
  config.seq_len = 32
  config.log_every = 1
  config.eval_every = 10
  config.checkpoint_every = 10
  config.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      max_seq_len=64)
  config.optimizer.update(name="adamw", learning_rate=3e-3, warmup_steps=2,
                          weight_decay=0.1)
  config.data.update(source="shakespeare", tokenizer="char", eval_batches=2)
  return config
