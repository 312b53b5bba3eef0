"""Tokenizers share one interface: ``tok(list_of_str) -> int32 [B, context_length]``.

Conventions every tokenizer here follows, because the text tower relies on them:
  * id 0 is padding and only ever appears after the end-of-text token;
  * every row ends with the end-of-text token (truncation keeps it), so the
    text tower pools at the last non-padding position.
"""

from __future__ import annotations

import re
import zlib
from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
  vocab_size: int
  context_length: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    ...


def pack_ids(rows: Sequence[Sequence[int]], sot: int, eot: int,
             context_length: int) -> np.ndarray:
  """[sot] + ids + [eot], truncated so eot stays last, zero-padded."""
  out = np.zeros((len(rows), context_length), np.int32)
  for i, ids in enumerate(rows):
    ids = [sot, *ids][: context_length - 1] + [eot]
    out[i, : len(ids)] = ids
  return out


_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]", re.IGNORECASE)


class HashWordTokenizer:
  """File-free word tokenizer for the demo and tests: words hashed into buckets.

  Needs no vocabulary file, so the offline default runs anywhere. Words are
  lower-cased and hashed with CRC32 (stable across processes and platforms,
  unlike ``hash``); collisions are harmless at the demo's vocabulary size.
  """

  PAD, SOT, EOT = 0, 1, 2
  _RESERVED = 3

  def __init__(self, vocab_size: int = 4096, context_length: int = 32):
    if vocab_size <= self._RESERVED:
      raise ValueError(f"vocab_size must be > {self._RESERVED}, got {vocab_size}")
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.vocab_size = vocab_size
    self.context_length = context_length

  def word_id(self, word: str) -> int:
    buckets = self.vocab_size - self._RESERVED
    return self._RESERVED + zlib.crc32(word.lower().encode("utf-8")) % buckets

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("pass a list of strings, not a single string")
    rows = [[self.word_id(w) for w in _WORD_RE.findall(t)] for t in texts]
    return pack_ids(rows, self.SOT, self.EOT, self.context_length)


def get_tokenizer(name: str, *, context_length: int, vocab_size: int = 4096,
                  path: str | None = None) -> Tokenizer:
  """Builds the tokenizer named by ``config.data.tokenizer``."""
  if name == "builtin":
    return HashWordTokenizer(vocab_size=vocab_size, context_length=context_length)
  if name == "clip_bpe":
    from cvlg_jax.data.clip_bpe import ClipBpeTokenizer
    return ClipBpeTokenizer(path, context_length=context_length)
  if name == "sentencepiece":
    from cvlg_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer
    return SentencePieceTokenizer(path, context_length=context_length)
  raise ValueError(f"data.tokenizer={name!r} is unknown; "
                   f"allowed: {', '.join(TOKENIZER_NAMES)}")


TOKENIZER_NAMES = ("builtin", "clip_bpe", "sentencepiece")
