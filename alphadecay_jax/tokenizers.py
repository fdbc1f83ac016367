"""Tokenizers: char, byte, SentencePiece (loaded or trained locally), synthetic.

All encode to int32 NumPy arrays. `eos_id` is the end-of-document token the
packer appends (None: documents are separated by '\\n\\n' in the text), and
`fingerprint` identifies the vocabulary; tokenizers compare and hash by it, so
they can key the in-process token cache in `data`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import sentencepiece as spm

from alphadecay_jax import corpora, data

log = logging.getLogger(__name__)

# Bump when the trainer options below change, so stale cached models are unused.
_SP_TRAINER_VERSION = 1
_SP_MAX_SENTENCES = 50_000  # keeps local training well under a second


@runtime_checkable
class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int | None
  fingerprint: str

  def encode(self, text: str) -> np.ndarray:
    ...

  def decode(self, ids) -> str:
    ...


class _Base:
  """Equality and hashing by fingerprint (used as a cache key)."""

  fingerprint: str = ''
  eos_id: int | None = None
  vocab_size: int = 0

  def __eq__(self, other: object) -> bool:
    return type(other) is type(self) and other.fingerprint == self.fingerprint

  def __hash__(self) -> int:
    return hash((type(self).__name__, self.fingerprint))

  def __repr__(self) -> str:
    return f'{type(self).__name__}(vocab_size={self.vocab_size})'


class CharTokenizer(_Base):
  """One id per character of a fixed vocabulary (sorted code points)."""

  def __init__(self, chars: str):
    self.chars = ''.join(sorted(set(chars)))
    self._codes = np.array([ord(ch) for ch in self.chars], np.uint32)
    self.vocab_size = len(self.chars)
    self.fingerprint = 'char:' + hashlib.sha256(self.chars.encode()).hexdigest()[:16]

  def encode(self, text: str) -> np.ndarray:
    # Vectorised: code points -> position in the sorted vocabulary.
    codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    ids = np.searchsorted(self._codes, codes).clip(0, self.vocab_size - 1)
    bad = self._codes[ids] != codes
    if bad.any():
      unknown = sorted({chr(c) for c in codes[bad]})
      raise ValueError(f'characters {unknown!r} are not in the char vocabulary')
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    return ''.join(self.chars[i] for i in np.asarray(ids).reshape(-1))


class ByteTokenizer(_Base):
  """UTF-8 bytes, 256 ids."""

  vocab_size = 256
  fingerprint = 'byte'

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return bytes(np.asarray(ids, np.uint8).reshape(-1)).decode('utf-8', 'replace')


class SentencePieceTokenizer(_Base):
  """A SentencePiece model given as serialized proto bytes."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.vocab_size()
    eos = self._sp.eos_id()
    self.eos_id = eos if eos >= 0 else None
    self.fingerprint = 'sp:' + hashlib.sha256(model_proto).hexdigest()[:16]

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def __getstate__(self) -> dict[str, bytes]:
    return {'model_proto': self.model_proto}  # the processor is rebuilt

  def __setstate__(self, state: dict[str, bytes]) -> None:
    self.__init__(state['model_proto'])


class SyntheticTokenizer(_Base):
  """Stand-in for synthetic tokens: ids are written as space-separated ints."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size
    self.fingerprint = f'synthetic:{vocab_size}'

  def encode(self, text: str) -> np.ndarray:
    ids = np.array([int(t) for t in text.split()], np.int32)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f'synthetic ids must be in [0, {self.vocab_size})')
    return ids

  def decode(self, ids) -> str:
    return ' '.join(str(int(i)) for i in np.asarray(ids).reshape(-1))


# --------------------------------------------------------- local SP training


def _sp_sentences(docs: Sequence[str]) -> list[str]:
  """Paragraphs (speeches) of the training text, deterministically subsampled."""
  paragraphs = [p for d in docs for p in d.split('\n\n') if p.strip()]
  step = max(1, -(-len(paragraphs) // _SP_MAX_SENTENCES))
  return paragraphs[::step]


def _train_sentencepiece(sentences: list[str], vocab_size: int) -> bytes:
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=buf,
      vocab_size=vocab_size, model_type='bpe',
      # Identity normalisation + '\n' as a symbol + byte fallback make
      # decode(encode(text)) == text for any text, line breaks included.
      normalization_rule_name='identity', remove_extra_whitespaces=False,
      user_defined_symbols=['\n'], byte_fallback=True, character_coverage=1.0,
      unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
      # One thread, no sampling: the same sentences give the same model bytes.
      input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
      max_sentence_length=1 << 20, minloglevel=2)
  return buf.getvalue()


def _cache_dir(data_cfg) -> str:
  return os.path.expanduser(data_cfg.cache_dir or '~/.cache/alphadecay_jax')


def local_sentencepiece_model(data_cfg) -> bytes:
  """Trains (or loads from the disk cache) a BPE model on the training text.

  The cache file is keyed by vocab size, trainer version and a hash of the
  training sentences; it is written atomically so concurrent processes are safe.
  """
  sentences = _sp_sentences(corpora.corpus_documents(data_cfg, 'train'))
  h = hashlib.sha256(f'{_SP_TRAINER_VERSION}:{data_cfg.sentencepiece_vocab_size}'
                     .encode())
  for s in sentences:
    h.update(s.encode('utf-8') + b'\0')
  name = f'sp_bpe_{data_cfg.sentencepiece_vocab_size}_{h.hexdigest()[:16]}.model'
  path = os.path.join(_cache_dir(data_cfg), name)
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      return f.read()
  log.info('training a SentencePiece model (vocab %d) -> %s',
           data_cfg.sentencepiece_vocab_size, path)
  proto = _train_sentencepiece(sentences, data_cfg.sentencepiece_vocab_size)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
  with os.fdopen(fd, 'wb') as f:
    f.write(proto)
  os.replace(tmp, path)
  return proto


def build_tokenizer(data_cfg) -> Tokenizer:
  """The tokenizer named by `data_cfg.tokenizer` (validated first)."""
  data.validate_data_config(data_cfg)
  if data_cfg.source == 'synthetic':
    return SyntheticTokenizer(data_cfg.synthetic_vocab_size)
  if data_cfg.tokenizer == 'byte':
    return ByteTokenizer()
  if data_cfg.tokenizer == 'char':
    # Vocabulary of the whole corpus (train + validation): eval never sees
    # an unknown character, and the vocabulary does not depend on the split.
    return CharTokenizer(''.join(corpora.corpus_documents(data_cfg, 'all')) + '\n')
  if data_cfg.sentencepiece_model:
    with open(data_cfg.sentencepiece_model, 'rb') as f:
      return SentencePieceTokenizer(f.read())
  return SentencePieceTokenizer(local_sentencepiece_model(data_cfg))
