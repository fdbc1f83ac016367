"""`config.optimizer` defaults. Each technique's block is validated by its builder
module; `registry.validate_optimizer_config` runs them all."""

from __future__ import annotations

import ml_collections


def default_optimizer_config() -> ml_collections.ConfigDict:
  """Every key of `config.optimizer`, with its default."""
  return ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=1e-3,
      schedule="cosine",
      warmup_steps=100,
      min_lr_ratio=0.1,        # cosine floor, as a fraction of the peak
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      decay_embeddings=False,
      grad_clip_norm=1.0,      # 0 disables clipping
      # Decay multipliers s in [s_min, s_max] mapped from alpha; refreshed every N steps.
      alpha_decay=dict(s_min=0.6666, s_max=5.0, refresh_every=500, xmin="median",
                       exclude_first_layer_q=True),
      awd=dict(coupled=True),
      adadecay=dict(alpha=4.0, granularity="module", refresh_every=500, coupled=True),
      # Hidden matrices step at lr_t * matrix_lr_scale, the rest (AdamW) at
      # lr_t * adam_lr_scale; eps floors norms relative to the matrix RMS.
      sinkgd=dict(num_iters=5, matrix_lr_scale=1.0, adam_lr_scale=1.0, eps=1e-8),
      swan=dict(num_iters=1, ns_steps=5, matrix_lr_scale=1.0, adam_lr_scale=1.0,
                eps=1e-8),
      muon=dict(ns_coeffs="dion", beta=0.95, nesterov=True, matrix_lr_scale=1.0,
                adam_lr_scale=1.0),
      # Projections after each step (none|normalize|hammer|spectral_decay|soft_cap|
      # hard_cap|exact_cap); caps in RMS->RMS units; 0 disables head / embedding caps.
      lipschitz=dict(projection="none", w_max=1.0, head_projection="exact_cap",
                     head_w_max=0.0, embed_max_rms=0.0, spectral_decay=0.0,
                     power_iters=16),
      sam=dict(
          rho=0.05,                # radius for name=lightsam|sam|asam
          variant="adagrad_norm",  # LightSAM accumulators: adagrad_norm|adagrad|adam
          base="adamw",            # descent optimizer for name=sam|asam
          asam_eta=0.01,           # ASAM's T = |w| + asam_eta
          # Wraps any other optimizer name: kind none|lightsam|sam|asam.
          perturbation=dict(kind="none", rho=0.05, variant="adagrad_norm"),
      ),
  ))
