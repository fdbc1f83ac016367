r"""LLaMA-1B on C4 (en) with the AlphaDecay paper's recipe (arXiv 2506.14562).

Needs the C4 TFDS data (`tfds build c4/en` or --config.data.tfds_data_dir=gs://...) and
the T5 SentencePiece model (--config.data.sentencepiece_model=PATH). On a pod:

  python -m alphadecay_jax.train --config configs/llama_1b.py --workdir gs://BUCKET/llama_1b
"""

from alphadecay_jax import presets
from alphadecay_jax.train import default_run_config


def get_config():
  return presets.llama_c4(default_run_config(), "1b")
