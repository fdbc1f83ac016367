r"""A ~10M-parameter LLaMA for CPU throughput and optimizer comparisons (Shakespeare chars).

  python -m alphadecay_jax.train --config configs/cpu_10m.py --workdir /tmp/cpu_10m
"""

from alphadecay_jax.train import default_run_config


def get_config():
  config = default_run_config()
  config.steps = 2000
  config.batch_size = 16
  config.seq_len = 256
  config.eval_every = 250
  config.checkpoint_every = 500
  config.model.update(d_model=512, n_layers=3, n_heads=8, n_kv_heads=8, d_ff=1376,
                      max_seq_len=512)
  config.optimizer.update(name="adamw", learning_rate=1e-3, warmup_steps=100,
                          b2=0.99, weight_decay=0.1)
  config.data.update(source="shakespeare", tokenizer="char")
  return config
