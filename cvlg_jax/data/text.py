"""Word splitting and id packing shared by the tokenizers and the synthetic
data. A leaf module (no cvlg_jax imports), so the tokenizers, the CLIP BPE
implementation and the synthetic vocabulary can all use it without importing
each other."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]", re.IGNORECASE)


def split_words(text: str) -> list[str]:
  """Lower-cased words and single punctuation marks, as the builtin tokenizer
  sees them."""
  return [w.lower() for w in _WORD_RE.findall(text)]


def pack_ids(rows: Sequence[Sequence[int]], sot: int, eot: int,
             context_length: int) -> np.ndarray:
  """[sot] + ids + [eot], truncated so eot stays last, zero-padded."""
  out = np.zeros((len(rows), context_length), np.int32)
  for i, ids in enumerate(rows):
    ids = [sot, *ids][: context_length - 1] + [eot]
    out[i, : len(ids)] = ids
  return out
