"""SentencePiece tokenizer under the shared ``tok(texts) -> int32 [B, L]`` API.

Id 0 must mean padding only. SentencePiece models disagree on what id 0 is:
T5/big_vision-style models reserve it for ``<pad>`` (pad=0, eos=1, unk=2),
while SentencePiece's defaults put ``<unk>`` there (unk=0, bos=1, eos=2, no
pad). So the shift is chosen per model:

  * pad_id == 0: ids are used unchanged. ``<pad>`` is a control symbol that
    encoding never emits, so 0 already means padding only, and pretrained
    embedding tables for such models line up id for id.
  * otherwise: every id is shifted by +1 and 0 is added as padding, so
    ``vocab_size`` = pieces + 1.

Rows are ``ids + [eos]``, zero-padded; over-long texts are cut so that eos
stays last. No BOS is added: the text tower pools at the end token, and
big_vision's SentencePiece text towers do not use one either. Text is passed
to SentencePiece as is: its own normaliser (e.g. NFKC) is part of the model.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from etils import epath
import numpy as np
import sentencepiece as spm


class SentencePieceTokenizer:
  """``tok(texts) -> int32 [B, context_length]``; see the module docstring."""

  def __init__(self, model_path: str, context_length: int):
    if context_length < 1:
      raise ValueError(f"context_length must be >= 1, got {context_length}")
    if model_path is None:
      raise FileNotFoundError(
          "sentencepiece tokenizer needs the path of a .model file; got None")
    model_path = os.fspath(model_path)
    if not epath.Path(model_path).is_file():  # local or gs://
      raise FileNotFoundError(
          f"SentencePiece model file not found: {model_path!r}")
    self._sp = spm.SentencePieceProcessor(
        model_proto=epath.Path(model_path).read_bytes())
    if self._sp.eos_id() < 0:
      raise ValueError(
          f"SentencePiece model {model_path!r} has no EOS piece (eos_id=-1); "
          "the text tower needs one to pool at. Train it with eos_id >= 0.")
    self.context_length = context_length
    self.offset = 0 if self._sp.pad_id() == 0 else 1
    self.vocab_size = self._sp.get_piece_size() + self.offset
    self.eos_id = self._sp.eos_id() + self.offset

  def encode(self, text: str) -> list[int]:
    """Text -> shifted piece ids, without eos."""
    return [i + self.offset for i in self._sp.encode(text)]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("pass a list of strings, not a single string")
    rows = self._sp.encode(list(texts))
    out = np.zeros((len(rows), self.context_length), np.int32)
    for r, ids in enumerate(rows):
      ids = [i + self.offset for i in ids[: self.context_length - 1]]
      ids.append(self.eos_id)
      out[r, : len(ids)] = ids
    return out

  def decode(self, ids: Iterable[int]) -> str:
    """Ids (e.g. one output row) -> text; stops at eos, skips padding."""
    pieces = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != 0:
        pieces.append(i - self.offset)
    return self._sp.decode(pieces)
