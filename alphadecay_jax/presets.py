"""Model sizes and the C4 pre-training recipe of the AlphaDecay LLaMA family.

Sizes from arXiv 2506.14562 (which trains the GaLore LLaMA configs): C4 en, T5
SentencePiece vocabulary (32000), sequence 256, batch 512 sequences, peak lr 1e-3,
10% warmup, cosine to 0.1x, Adam with coupled L2 decay 1e-5. Step counts: 60M 10k and
135M 20k (paper); 350M 60k and 1B 100k follow the GaLore recipe the paper builds on.
"""

from __future__ import annotations

import ml_collections

# name -> (d_model, d_ff, n_heads, n_layers, steps)
LLAMA_SIZES = {
    "60m": (512, 1376, 8, 8, 10_000),
    "135m": (768, 2048, 12, 12, 20_000),
    "350m": (1024, 2736, 16, 24, 60_000),
    "1b": (2048, 5461, 32, 24, 100_000),
}
T5_VOCAB_SIZE = 32_000
# The T5 vocabulary is published at gs://t5-data/vocabs/cc_all.32000/sentencepiece.model;
# copy it locally and pass --config.data.sentencepiece_model=PATH (nothing is downloaded).
T5_SENTENCEPIECE_MODEL = ""


def llama_c4(config: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
  """Fills `config` (from `train.default_run_config()`) with the paper's recipe for `size`."""
  d_model, d_ff, n_heads, n_layers, steps = LLAMA_SIZES[size]
  config.steps = steps
  config.batch_size = 512
  config.seq_len = 256
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.peak_tflops_per_device = 197.0  # TPU v5e bf16; set to your accelerator's
  config.model.update(vocab_size=T5_VOCAB_SIZE, d_model=d_model, n_layers=n_layers,
                      n_heads=n_heads, n_kv_heads=n_heads, d_ff=d_ff, max_seq_len=1024,
                      compute_dtype="bfloat16",
                      remat="full" if size in ("350m", "1b") else "none")
  config.optimizer.update(name="adam_l2", learning_rate=1e-3, schedule="cosine",
                          warmup_steps=steps // 10, min_lr_ratio=0.1, b1=0.9, b2=0.999,
                          weight_decay=1e-5, grad_clip_norm=0.0)
  config.data.update(source="tfds", tfds_name="c4/en", tfds_text_key="text",
                     train_split="train", eval_split="validation",
                     tokenizer="sentencepiece",
                     sentencepiece_model=T5_SENTENCEPIECE_MODEL, eval_batches=20)
  return config
