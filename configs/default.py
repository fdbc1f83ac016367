r"""Default: a ~1.3M-parameter LLaMA on the embedded Shakespeare corpus, characters, CPU.

Trains in a few minutes on 2 CPU cores and prints validation loss and accuracy:

  python -m alphadecay_jax.train --config configs/default.py --workdir /tmp/default
"""

from alphadecay_jax.train import default_run_config


def get_config():
  config = default_run_config()
  config.steps = 400
  config.batch_size = 16
  config.seq_len = 128
  config.eval_every = 100
  config.checkpoint_every = 200
  config.model.update(d_model=160, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=432,
                      max_seq_len=256)
  config.optimizer.update(name="adamw", learning_rate=3e-3, warmup_steps=40,
                          b2=0.99, weight_decay=0.1)
  config.data.update(source="shakespeare", tokenizer="char", eval_batches=8)
  return config
