"""The one place that turns `config.optimizer` into an optax chain.

Every chain is: global-norm clipping -> the named optimizer (which applies the
learning-rate schedule). Each name maps to a builder in `registry.BUILDERS`; a technique
adds its builder module (`*_builders.py`, with the validator of its settings) and, if
it has settings, a sub-block of `config.default_optimizer_config()`.
  adamw    decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101), optax.adamw
           semantics: u = -lr_t * (adam(g) + wd * w).
  adam_l2  coupled L2 decay as in the AlphaDecay paper's main table (arXiv 2506.14562):
           g <- g + wd * w before the Adam moments.
  alphadecay_adamw / alphadecay_adam_l2   AlphaDecay (arXiv 2506.14562): per-module
           decay from each matrix's ESD alpha, decoupled / coupled
           (`optimizer.alpha_decay`, transforms/alpha_decay.py).
  awd / adadecay   the paper's baselines, arXiv 2210.00094 / 1907.08931
           (`optimizer.awd`, `optimizer.adadecay`; transforms/decay_baselines.py);
           `weight_decay` is AWD's lambda_awd and AdaDecay's base decay.
  sinkgd   SinkGD (arXiv 2502.06742): stateless row/column l2 normalisation of hidden
           matrices, AdamW for the rest; `optimizer.sinkgd` (transforms/multinorm.py).
  swan     SWAN-style: row standardisation + Newton-Schulz whitening; `optimizer.swan`.
  lightsam LightSAM (arXiv 2505.24399): adaptive perturbation + adaptive descent,
           `optimizer.sam.variant` adagrad_norm | adagrad | adam (transforms/sam.py).
  sam/asam SAM (arXiv 2010.01412) / ASAM (arXiv 2102.11600) perturbation around the
           descent optimizer named by `optimizer.sam.base`.
  Any other name + `optimizer.sam.perturbation.kind` (lightsam | sam | asam) wraps that
  optimizer in the perturbation. With SAM, clipping applies to the gradient the descent
  consumes (the one at the perturbed point), as it does without SAM.
  muon     optax.contrib.muon on hidden matrices at lr_t * matrix_lr_scale, AdamW (no
           decay) on embeddings, head and norms at lr_t * adam_lr_scale; `optimizer.muon`.
  Any name + `optimizer.lipschitz.projection` (arXiv 2507.13338, transforms/lipschitz.py):
  updates become P(params + u) - params, P capping hidden matrices' RMS->RMS norms at
  w_max, the head's at head_w_max (`head_projection`) and token vectors' RMS at
  embed_max_rms. soft_cap needs name=muon (its coupling uses Muon's update-norm bound).
Decay touches only matrices: norms are spared, embeddings too unless
`optimizer.decay_embeddings` is set.
"""

from alphadecay_jax.optimizers.common import SCHEDULES, Builder, decay_mask, make_schedule
from alphadecay_jax.optimizers.config import default_optimizer_config
from alphadecay_jax.optimizers.multinorm_builders import MULTINORM_NAMES
from alphadecay_jax.optimizers.registry import (BUILDERS, build_optimizer,
                                                validate_optimizer_config)
from alphadecay_jax.optimizers.sam_builders import PERTURBATIONS, SAM_NAMES
from alphadecay_jax.optimizers.state import state_bytes, state_metrics

__all__ = ["BUILDERS", "Builder", "MULTINORM_NAMES", "PERTURBATIONS", "SAM_NAMES",
           "SCHEDULES", "build_optimizer", "decay_mask", "default_optimizer_config",
           "make_schedule", "state_bytes", "state_metrics", "validate_optimizer_config"]
