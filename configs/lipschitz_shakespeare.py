r"""A 2-Lipschitz transformer on Shakespeare characters (CPU-scale version of arXiv 2507.13338).

  python -m alphadecay_jax.train --config configs/lipschitz_shakespeare.py --workdir /tmp/lip

The paper's notebook run is d 256, 3 blocks, 4 heads, context 256, batch 512, 2000 steps
of Muon at lr 0.1 (linear decay); it reports 60% validation accuracy at Lipschitz bound 2.
Here: the Lipschitz-friendly model (no norms, convex residuals, 1/d_head attention with
output /3, GeLU/1.1289 MLP) at d 128, 3 blocks, context 128, batch 32, trained with Muon
(dion coefficients) on the hidden matrices and Adam on the embedding and head, then
  hidden matrices  soft cap at RMS->RMS norm w_max = 1 (guaranteed: Muon's update norm
                   is bounded, see transforms/lipschitz.py),
  head             exact SVD cap at 2.28,
  token vectors    RMS <= 1,
so `model.bound_at_caps` = 0.8758 x 2.28 = 1.997 <= 2 certifies the whole network; the
bound actually reached (`lipschitz_bound`, exact norms) is logged at every eval.
configs/lipschitz_shakespeare_unconstrained.py is the same run without projections.
"""

from alphadecay_jax.train import default_run_config

TARGET_BOUND = 2.0


def get_config():
  config = default_run_config()
  config.steps = 300
  config.batch_size = 32
  config.seq_len = 128
  config.log_every = 10
  config.eval_every = 100
  config.checkpoint_every = 0
  config.model.update(d_model=128, n_layers=3, n_heads=4, n_kv_heads=4, d_ff=512,
                      max_seq_len=256, lipschitz=True, softmax_scale=1.0)
  config.optimizer.update(name="muon", learning_rate=0.1, schedule="cosine",
                          warmup_steps=10, min_lr_ratio=0.0, b1=0.9, b2=0.95,
                          weight_decay=0.0)
  config.optimizer.muon.update(ns_coeffs="dion", adam_lr_scale=0.03)
  config.optimizer.lipschitz.update(projection="soft_cap", w_max=1.0,
                                    head_projection="exact_cap", head_w_max=2.28,
                                    embed_max_rms=1.0)
  config.data.update(source="shakespeare", tokenizer="char", eval_batches=8)
  return config
