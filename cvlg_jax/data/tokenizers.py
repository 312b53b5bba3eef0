"""Tokenizers share one interface: ``tok(list_of_str) -> int32 [B, context_length]``.

Conventions every tokenizer here follows, because the text tower relies on them:
  * id 0 is padding and only ever appears after the end-of-text token;
  * every row ends with the end-of-text token (truncation keeps it), so the
    text tower pools at the last non-padding position.
"""

from __future__ import annotations

import zlib
from typing import Callable, Protocol, Sequence

import numpy as np

from cvlg_jax.data.clip_bpe import ClipBpeTokenizer
from cvlg_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from cvlg_jax.data.text import pack_ids, split_words


class Tokenizer(Protocol):
  vocab_size: int
  context_length: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    ...


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


# data.tokenizer -> factory(context_length, vocab_size, path, known_words).
TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {
    "builtin": lambda context_length, vocab_size, path, known_words:
        HashWordTokenizer(vocab_size, context_length, known_words),
    "clip_bpe": lambda context_length, vocab_size, path, known_words:
        ClipBpeTokenizer(path, context_length=context_length),
    "sentencepiece": lambda context_length, vocab_size, path, known_words:
        SentencePieceTokenizer(path, context_length=context_length),
}


def get_tokenizer(name: str, *, context_length: int, vocab_size: int = 4096,
                  path: str | None = None,
                  known_words: Sequence[str] = ()) -> Tokenizer:
  """Builds the tokenizer named by ``config.data.tokenizer``. ``vocab_size``
  and ``known_words`` (words that get collision-free ids) are the builtin
  tokenizer's; ``path`` the file the others read."""
  if name not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={name!r} is unknown; "
                     f"allowed: {', '.join(TOKENIZERS)}")
  return TOKENIZERS[name](context_length, vocab_size, path, known_words)
