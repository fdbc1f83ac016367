"""Tests for alphadecay_jax.data and alphadecay_jax.tokenizers (no network)."""

import json
import logging

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from alphadecay_jax import corpora
from alphadecay_jax import data
from alphadecay_jax import tokenizers

SEQ = 32


def _cfg(**overrides):
  cfg = data.default_data_config()
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope='module')
def char_setup():
  cfg = _cfg()
  return cfg, tokenizers.build_tokenizer(cfg)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
    np.testing.assert_array_equal(x['targets'], y['targets'])


def _window_ids(tokens, seq_len, batch):
  """Index i of the window tokens[i*seq_len : i*seq_len+seq_len+1] of each row."""
  full = np.concatenate([batch['inputs'][:, :1], batch['targets']], axis=1)
  ids = []
  for row in full:
    # Candidate windows start with the same seq_len tokens; confirm exactly.
    starts = np.flatnonzero(tokens[: len(tokens) - seq_len : seq_len] == row[0])
    hits = [i for i in starts
            if np.array_equal(tokens[i * seq_len: i * seq_len + seq_len + 1], row)]
    assert hits, 'row is not a window of the packed stream'
    ids.append(hits[0])
  return ids


# ---------------------------------------------------------------- corpus


def test_plays_are_plain_text():
  plays = corpora.shakespeare_plays()
  assert len(plays) == 38
  text = ''.join(plays.values())
  for markup in ('**', '##', '_Enter', '_Exit', '\\[', '&amp;', '  \n'):
    assert markup not in text, markup
  hamlet = plays['hamlet']
  assert hamlet.startswith('Hamlet\n\nACT I\n')
  assert '\nHAMLET\nTo be, or not to be' in hamlet  # speaker line kept
  assert '\nEnter Ghost\n' in hamlet  # stage direction kept as a plain line
  assert len(text) > 4_500_000


def test_shakespeare_split_deterministic_and_disjoint():
  train, val = corpora.shakespeare_split(4)
  assert corpora.shakespeare_split(4) == (train, val)
  assert len(val) == 4 and len(train) == 34
  assert not set(train) & set(val)
  assert set(train) | set(val) == set(corpora.shakespeare_plays())
  assert val == ['the-comedy-of-errors', 'henry-vi-part-3', 'troilus-and-cressida',
                 'king-lear']
  assert len(corpora.shakespeare_split(7)[1]) == 7


# ------------------------------------------------------------ tokenizers


def test_char_tokenizer_round_trip(char_setup):
  _, tok = char_setup
  text = ''.join(corpora.shakespeare_plays().values())
  assert isinstance(tok, tokenizers.Tokenizer)
  assert tok.vocab_size == len(set(text) | {'\n'}) == 80
  sample = corpora.shakespeare_plays()['macbeth'][:5000]
  ids = tok.encode(sample)
  assert ids.dtype == np.int32 and ids.shape == (len(sample),)
  assert tok.decode(ids) == sample
  assert tok.encode('A')[0] < tok.encode('a')[0]  # sorted code points
  with pytest.raises(ValueError, match='not in the char vocabulary'):
    tok.encode('€')


def test_byte_tokenizer_round_trips_unicode():
  tok = tokenizers.build_tokenizer(_cfg(tokenizer='byte'))
  text = 'Ünïcødé — 😀 ok\n'
  ids = tok.encode(text)
  assert tok.vocab_size == 256 and ids.dtype == np.int32
  assert len(ids) == len(text.encode('utf-8')) and ids.max() < 256
  assert tok.decode(ids) == text


def test_sentencepiece_trained_locally_and_cached(tmp_path, monkeypatch):
  cfg = _cfg(tokenizer='sentencepiece', sentencepiece_vocab_size=512,
             cache_dir=str(tmp_path / 'a'))
  tok = tokenizers.build_tokenizer(cfg)
  assert tok.vocab_size == 512 and tok.eos_id == 1
  cached = list((tmp_path / 'a').glob('sp_bpe_512_*.model'))
  assert len(cached) == 1 and cached[0].read_bytes() == tok.model_proto
  text = corpora.shakespeare_plays()['hamlet'][:3000] + '  Ünïcødé 😀\n\n'
  ids = tok.encode(text)
  assert len(ids) < len(text) / 1.5 and ids.max() < 512  # merges learnt
  assert tok.decode(ids) == text

  # Second build: served from the cache without training.
  def no_training(*args, **kwargs):
    raise AssertionError('retrained despite the cache')
  with monkeypatch.context() as m:
    m.setattr(tokenizers, '_train_sentencepiece', no_training)
    again = tokenizers.build_tokenizer(cfg)
  assert again.model_proto == tok.model_proto and again == tok

  # Deterministic: training again elsewhere gives the same bytes.
  fresh = tokenizers.build_tokenizer(_cfg(tokenizer='sentencepiece',
                                          sentencepiece_vocab_size=512,
                                          cache_dir=str(tmp_path / 'b')))
  assert fresh.model_proto == tok.model_proto


def test_synthetic_tokenizer_vocab():
  tok = tokenizers.build_tokenizer(_cfg(source='synthetic', synthetic_vocab_size=77))
  assert tok.vocab_size == 77
  assert tok.decode(tok.encode('3 76 0')) == '3 76 0'


# --------------------------------------------------------- fixed corpora


def test_train_batches_are_shifted_windows(char_setup):
  cfg, tok = char_setup
  it = data.make_train_iterator(cfg, tokenizer=tok, batch_size=8, seq_len=SEQ, seed=0)
  assert isinstance(it, grain.DatasetIterator)
  tokens = data.corpus_tokens(cfg, tok, 'train')
  seen = []
  for batch in _take(it, 3):
    assert set(batch) == {'inputs', 'targets'}
    for v in batch.values():
      assert v.shape == (8, SEQ) and v.dtype == np.int32
      assert 0 <= v.min() and v.max() < tok.vocab_size
    np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
    seen += _window_ids(tokens, SEQ, batch)
  assert len(set(seen)) == len(seen)  # no window twice within an epoch
  # Documents are joined by a blank line and validation plays are absent.
  train_text = tok.decode(tokens)
  assert 'Hamlet\n\nACT I' in train_text and 'King Lear\n\nACT I' not in train_text


def test_same_seed_same_batches_other_seed_other_order(char_setup):
  cfg, tok = char_setup
  make = lambda seed: data.make_train_iterator(cfg, tokenizer=tok, batch_size=4,
                                               seq_len=SEQ, seed=seed)
  a, b, c = _take(make(3), 4), _take(make(3), 4), _take(make(4), 4)
  _assert_same_batches(a, b)
  assert not np.array_equal(a[0]['inputs'], c[0]['inputs'])


def test_epochs_repeat_and_reshuffle(tmp_path):
  # 10 windows of 8 tokens (+1 for the last target) -> 5 batches of 2 per epoch.
  # 80 distinct chars + the '\n\n' separator, so every window is unique.
  (tmp_path / 'a.txt').write_text(''.join(chr(40 + i) for i in range(80)))
  (tmp_path / 'b.txt').write_text('held out\n')
  cfg = _cfg(source='text', text_files=str(tmp_path / '*.txt'), tokenizer='byte')
  tok = tokenizers.build_tokenizer(cfg)
  tokens = data.corpus_tokens(cfg, tok, 'train')
  assert len(tokens) == 82
  it = data.make_train_iterator(cfg, tokenizer=tok, batch_size=2, seq_len=8, seed=0)
  ids = [i for b in _take(it, 15) for i in _window_ids(tokens, 8, b)]
  epochs = [ids[0:10], ids[10:20], ids[20:30]]
  for e in epochs:
    assert sorted(e) == list(range(10))
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_iterator_state_restores_exact_position(char_setup):
  cfg, tok = char_setup
  make = lambda: data.make_train_iterator(cfg, tokenizer=tok, batch_size=4,
                                          seq_len=SEQ, seed=1)
  it = make()
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
  want = _take(it, 3)
  restored = make()
  restored.set_state(state)
  _assert_same_batches(_take(restored, 3), want)


def test_processes_read_disjoint_halves_of_the_global_batch(char_setup):
  cfg, tok = char_setup
  tokens = data.corpus_tokens(cfg, tok, 'train')
  kw = dict(tokenizer=tok, batch_size=8, seq_len=SEQ, seed=5)
  one = _take(data.make_train_iterator(cfg, **kw), 2)
  halves = [_take(data.make_train_iterator(cfg, process_index=p, process_count=2,
                                           **kw), 2) for p in (0, 1)]
  for step in range(2):
    b0, b1 = halves[0][step], halves[1][step]
    assert b0['inputs'].shape == b1['inputs'].shape == (4, SEQ)
    w0, w1 = _window_ids(tokens, SEQ, b0), _window_ids(tokens, SEQ, b1)
    assert not set(w0) & set(w1)
    assert w0 + w1 == _window_ids(tokens, SEQ, one[step])  # = the 1-process batch
  with pytest.raises(ValueError, match='not divisible'):
    data.make_train_iterator(cfg, process_index=0, process_count=3, **kw)


def test_eval_batches_deterministic_and_sharded(char_setup):
  cfg, tok = char_setup
  kw = dict(tokenizer=tok, batch_size=8, seq_len=SEQ)
  ev = data.make_eval_batches(cfg, **kw)
  assert len(ev) == cfg.eval_batches
  _assert_same_batches(ev, data.make_eval_batches(cfg, **kw))
  val = data.corpus_tokens(cfg, tok, 'validation')
  # In corpus order: global batch k holds windows 8k .. 8k+7.
  assert _window_ids(val, SEQ, ev[1]) == list(range(8, 16))
  p1 = data.make_eval_batches(cfg, process_index=1, process_count=2, **kw)
  assert _window_ids(val, SEQ, p1[1]) == list(range(12, 16))
  assert tok.decode(ev[0]['inputs'][0]).startswith('The Comedy of Errors')


def test_text_source_glob_and_holdout(tmp_path, caplog):
  for name, body in [('a.txt', 'first file\n' * 50), ('b.txt', 'second file\n' * 50),
                     ('c.txt', 'held out\n')]:
    (tmp_path / name).write_text(body)
  cfg = _cfg(source='text', text_files=str(tmp_path / '*.txt'))
  tok = tokenizers.build_tokenizer(cfg)
  assert tok.decode(tok.encode('held out')) == 'held out'  # val chars in vocab
  train_text = tok.decode(data.corpus_tokens(cfg, tok, 'train'))
  assert 'second file' in train_text and 'held out' not in train_text
  batch = next(data.make_train_iterator(cfg, tokenizer=tok, batch_size=2,
                                        seq_len=16, seed=0))
  assert batch['inputs'].shape == (2, 16)
  with caplog.at_level(logging.WARNING):
    ev = data.make_eval_batches(cfg, tokenizer=tok, batch_size=2, seq_len=16)
  assert 'wrapping around' in caplog.text  # 11 tokens < 8 batches of windows
  assert len(ev) == 8 and ev[0]['inputs'].shape == (2, 16)
  assert tok.decode(ev[0]['inputs'][0]).startswith('held out\n\n')


def test_text_source_missing_files(tmp_path):
  pattern = str(tmp_path / 'nope' / '*.txt')
  with pytest.raises(ValueError, match=r'data\.text_files=.*nope.*matches no files'):
    tokenizers.build_tokenizer(_cfg(source='text', text_files=pattern))


def test_synthetic_batches():
  cfg = _cfg(source='synthetic', synthetic_vocab_size=50)
  tok = tokenizers.build_tokenizer(cfg)
  make = lambda seed, **kw: data.make_train_iterator(
      cfg, tokenizer=tok, batch_size=4, seq_len=SEQ, seed=seed, **kw)
  a = _take(make(0), 2)
  _assert_same_batches(a, _take(make(0), 2))
  assert not np.array_equal(a[0]['inputs'], next(make(1))['inputs'])
  assert a[0]['inputs'].shape == (4, SEQ) and a[0]['inputs'].max() < 50
  np.testing.assert_array_equal(a[0]['inputs'][:, 1:], a[0]['targets'][:, :-1])
  p1 = next(make(0, process_index=1, process_count=2))
  np.testing.assert_array_equal(p1['inputs'], a[0]['inputs'][2:])
  assert len(data.make_eval_batches(cfg, tokenizer=tok, batch_size=4, seq_len=SEQ)) == 8


# ------------------------------------------------------------------ tfds


def _mock_tfds(num_examples=40):
  # USE_CODE generates random lowercase strings for Text features.
  return tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE)


def _stream_of(cfg, tok, split, doc_ids):
  src = tfds.data_source(cfg.tfds_name, split=split)
  sep = data.separator_ids(tok)
  return np.concatenate([np.concatenate([tok.encode(src[i]['text']), sep])
                         for i in doc_ids])


def test_tfds_byte_pipeline_packs_and_restores():
  cfg = _cfg(source='tfds', tfds_name='lm1b', tokenizer='byte')
  tok = tokenizers.build_tokenizer(cfg)
  with _mock_tfds():
    make = lambda **kw: data.make_train_iterator(cfg, tokenizer=tok, batch_size=4,
                                                 seq_len=16, seed=0, **kw)
    it = make()
    batches = _take(it, 4)
    for b in batches:
      assert b['inputs'].shape == b['targets'].shape == (4, 16)
      assert b['inputs'].dtype == np.int32 and b['inputs'].max() < 256
      np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
    # Packing: consecutive rows are consecutive windows of one stream.
    rows = [np.concatenate([b['inputs'][r, :1], b['targets'][r]])
            for b in batches for r in range(4)]
    stream = np.concatenate([rows[0]] + [r[1:] for r in rows[1:]])
    assert all(np.array_equal(rows[i][-1], rows[i + 1][0]) for i in range(15))
    assert '\n\n' in tok.decode(stream)  # document separators
    state = json.loads(json.dumps(it.get_state()))
    assert state['offset'] > 0  # mid-document
    want = _take(it, 5)
    restored = make()
    restored.set_state(state)
    _assert_same_batches(_take(restored, 5), want)
    # Processes read disjoint documents (p::2): their first windows differ.
    p0, p1 = next(make(process_index=0, process_count=2)), next(
        make(process_index=1, process_count=2))
    assert p0['inputs'].shape == (2, 16)
    assert not np.array_equal(p0['inputs'], p1['inputs'])
    ev = data.make_eval_batches(cfg, tokenizer=tok, batch_size=4, seq_len=16)
    assert len(ev) == 8 and ev[0]['inputs'].shape == (4, 16)
    expected = _stream_of(cfg, tok, 'validation', range(10))
    np.testing.assert_array_equal(ev[0]['inputs'][1], expected[16:32])


def test_tfds_with_sentencepiece_model_path(tmp_path):
  # A model file given by path (as C4 configs pass the T5 vocabulary).
  local = _cfg(tokenizer='sentencepiece', sentencepiece_vocab_size=512,
               cache_dir=str(tmp_path))
  model = tmp_path / 'given.model'
  model.write_bytes(tokenizers.local_sentencepiece_model(local))
  cfg = _cfg(source='tfds', tfds_name='tiny_shakespeare', tokenizer='sentencepiece',
             sentencepiece_model=str(model))
  tok = tokenizers.build_tokenizer(cfg)
  assert tok.vocab_size == 512
  with _mock_tfds():
    batch = next(data.make_train_iterator(cfg, tokenizer=tok, batch_size=2,
                                          seq_len=24, seed=0))
    ev = data.make_eval_batches(cfg, tokenizer=tok, batch_size=2, seq_len=24)
    stream = _stream_of(cfg, tok, 'validation', range(20))
  assert batch['inputs'].shape == (2, 24) and batch['inputs'].max() < 512
  assert (stream == tok.eos_id).sum() == 20  # EOS closes every document
  np.testing.assert_array_equal(ev[0]['inputs'][0], stream[:24])


def test_orbax_checkpoint_of_the_iterator(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  cfg = _cfg(source='tfds', tfds_name='lm1b', tokenizer='byte')
  tok = tokenizers.build_tokenizer(cfg)
  with _mock_tfds():
    make = lambda: data.make_train_iterator(cfg, tokenizer=tok, batch_size=2,
                                            seq_len=8, seed=0)
    it = make()
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
      mngr.save(3, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointSave(it)))
      mngr.wait_until_finished()
      want = _take(it, 4)
      restored = mngr.restore(3, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(make())))
    _assert_same_batches(_take(restored['data_iter'], 4), want)


# ------------------------------------------------------------ validation


@pytest.mark.parametrize('overrides, message', [
    (dict(source='foo'), r"data\.source='foo' is not one of"),
    (dict(tokenizer='wordpiece'), r"data\.tokenizer='wordpiece' is not one of"),
    (dict(eval_batches=0), r'data\.eval_batches=0'),
    (dict(validation_plays=38), r'data\.validation_plays=38'),
    (dict(source='tfds', tfds_name='lm1b'), r"data\.tokenizer='char' is not allowed"),
    (dict(source='tfds', tokenizer='byte'), r"data\.tfds_name=''"),
    (dict(source='tfds', tfds_name='lm1b', tokenizer='sentencepiece'),
     r"data\.sentencepiece_model=''"),
    (dict(tokenizer='sentencepiece', sentencepiece_model='/no/such.model'),
     r"data\.sentencepiece_model='/no/such\.model'"),
    (dict(source='text'), r"data\.text_files=''"),
    (dict(tokenizer='sentencepiece', sentencepiece_vocab_size=100),
     r'data\.sentencepiece_vocab_size=100'),
])
def test_validate_data_config_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    data.validate_data_config(_cfg(**overrides))


def test_default_config_is_valid():
  cfg = data.default_data_config()
  data.validate_data_config(cfg)
  assert cfg.source == 'shakespeare' and cfg.tokenizer == 'char'
  assert cfg.eval_batches == 8 and cfg.validation_plays == 4
