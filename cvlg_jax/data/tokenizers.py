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


def split_words(text: str) -> list[str]:
  """Lower-cased words and single punctuation marks, as the builtin tokenizer
  sees them."""
  return [w.lower() for w in _WORD_RE.findall(text)]


class HashWordTokenizer:
  """File-free word tokenizer for the demo and tests.

  Needs no vocabulary file, so the offline default runs anywhere.
  ``known_words`` get their own ids (3, 4, ...), so a small fixed vocabulary
  — the synthetic data's — never collides; any other word is hashed with
  CRC32 (stable across processes, unlike ``hash``) into the remaining ids,
  where collisions are possible but rare at a few thousand ids.
  """

  PAD, SOT, EOT = 0, 1, 2
  _RESERVED = 3

  def __init__(self, vocab_size: int = 4096, context_length: int = 32,
               known_words: Sequence[str] = ()):
    known = list(dict.fromkeys(w.lower() for w in known_words))
    if vocab_size <= self._RESERVED + len(known):
      raise ValueError(f"vocab_size must be > {self._RESERVED + len(known)} "
                       f"(3 special ids + {len(known)} known words), got {vocab_size}")
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.vocab_size = vocab_size
    self.context_length = context_length
    self._known = {w: self._RESERVED + i for i, w in enumerate(known)}

  def word_id(self, word: str) -> int:
    word = word.lower()
    if word in self._known:
      return self._known[word]
    first = self._RESERVED + len(self._known)
    return first + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - first)

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("pass a list of strings, not a single string")
    rows = [[self.word_id(w) for w in split_words(t)] for t in texts]
    return pack_ids(rows, self.SOT, self.EOT, self.context_length)


def get_tokenizer(name: str, *, context_length: int, vocab_size: int = 4096,
                  path: str | None = None) -> Tokenizer:
  """Builds the tokenizer named by ``config.data.tokenizer``."""
  if name == "builtin":
    from cvlg_jax.data.synthetic import VOCABULARY
    return HashWordTokenizer(vocab_size=vocab_size, context_length=context_length,
                             known_words=VOCABULARY)
  if name == "clip_bpe":
    from cvlg_jax.data.clip_bpe import ClipBpeTokenizer
    return ClipBpeTokenizer(path, context_length=context_length)
  if name == "sentencepiece":
    from cvlg_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer
    return SentencePieceTokenizer(path, context_length=context_length)
  raise ValueError(f"data.tokenizer={name!r} is unknown; "
                   f"allowed: {', '.join(TOKENIZER_NAMES)}")


TOKENIZER_NAMES = ("builtin", "clip_bpe", "sentencepiece")
