r"""LLaMA-350M on C4 (en) with the AlphaDecay paper's recipe (arXiv 2506.14562).

Needs C4 prepared for TFDS (`tfds build c4/en`, or a copy in DATA_DIR) and a local copy
of the T5 SentencePiece model (gs://t5-data/vocabs/cc_all.32000/sentencepiece.model):

  python -m alphadecay_jax.train --config configs/llama_350m.py --workdir WORKDIR \
      --config.data.tfds_data_dir=DATA_DIR --config.data.sentencepiece_model=SPM_PATH
"""

from alphadecay_jax import presets
from alphadecay_jax.train import default_run_config


def get_config():
  return presets.llama_c4(default_run_config(), "350m")
