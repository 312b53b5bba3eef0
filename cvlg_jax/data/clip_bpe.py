"""OpenAI CLIP's byte-level BPE, id for id the same as its ``SimpleTokenizer``.

Compatibility matters because released CLIP text towers (and every paper
number measured with them) are tied to these exact ids: with the standard
``bpe_simple_vocab_16e6.txt.gz`` the vocabulary has 49408 entries,
``<|startoftext|>`` is 49406 and ``<|endoftext|>`` is 49407.

The pipeline, in the reference's order:
  1. clean: ``ftfy.fix_text`` (repairs mojibake), HTML-unescape twice, strip,
     collapse whitespace runs to one space, strip, lower-case;
  2. split into pieces with CLIP's regex (special tokens, the ``'s 't 're 've
     'm 'll 'd`` contractions, letter runs, single digits, runs of other
     non-space characters);
  3. map each piece's UTF-8 bytes to printable stand-in characters
     (``byte_alphabet``), mark the last one as word-final (``</w>``), and
     merge adjacent symbols, lowest merge rank first, until no ranked pair is
     left;
  4. look the symbols up: ids 0-255 are bytes, 256-511 word-final bytes, then
     one id per merge, then the two special tokens.

Caveat for the model side: id 0 is the byte ``!`` here (that is CLIP's
vocabulary, not a choice of ours), so an unmerged ``!`` inside a punctuation
run (e.g. ``"!!"`` with a merges file lacking ``! !</w>``) yields a 0 *before*
end-of-text. The full CLIP file merges the common cases, but code must find
the end-of-text token as the last non-zero position (as the text tower does),
never as the first zero, and must not mask ``ids == 0`` before it.
"""

from __future__ import annotations

import gzip
import html
import os
from typing import Iterable, Sequence

import ftfy
from etils import epath
import numpy as np
import regex

from cvlg_jax.data.text import pack_ids

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP reads lines 1 .. 49152-256-2 of the merges file (line 0 is a version
# header), so 256 bytes + 256 word-final bytes + merges + 2 specials = 49408.
MAX_MERGES = 49152 - 256 - 2

_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Alternation order is significant (leftmost alternative wins): specials,
# then contractions, then letter runs, single digits, other non-space runs.
_PIECE_RE = regex.compile(
    "|".join([regex.escape(SOT_TOKEN), regex.escape(EOT_TOKEN), *_CONTRACTIONS,
              r"\p{L}+", r"\p{N}", r"[^\s\p{L}\p{N}]+"]),
    regex.IGNORECASE)
_WHITESPACE_RE = regex.compile(r"\s+")


def byte_alphabet() -> list[tuple[int, str]]:
  """(byte, stand-in char) pairs in vocabulary order; list index = token id.

  Bytes that are visible, non-space Latin-1 characters stand for themselves
  and come first, in byte order; the other 68 bytes (controls, space, DEL,
  NBSP, soft hyphen) get the characters U+0100, U+0101, ... in byte order, so
  that no BPE symbol is whitespace or a control character.
  """
  visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
             *range(ord("®"), ord("ÿ") + 1)]
  visible_set = set(visible)
  hidden = [b for b in range(256) if b not in visible_set]
  return ([(b, chr(b)) for b in visible]
          + [(b, chr(256 + k)) for k, b in enumerate(hidden)])


def clean_text(text: str) -> str:
  """CLIP's text normalisation (step 1 above), in the reference's order.

  ftfy is skipped for printable ASCII without ``&``, where it cannot change
  anything (its fixes need non-ASCII, control characters or HTML entities)
  and would cost ~2/3 of the tokenizer's time.
  """
  if not (text.isascii() and text.isprintable() and "&" not in text):
    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  text = _WHITESPACE_RE.sub(" ", text).strip()
  return text.lower()


def read_merges(path: str, max_merges: int = MAX_MERGES
                ) -> list[tuple[str, str]]:
  """Reads a (gzipped or plain) CLIP merges file: header line, then "a b" lines.

  Like the reference, keeps lines 1..max_merges. Blank lines in that window
  are skipped (the reference would turn one into an empty token, which only
  happens for truncated files that end in a newline).
  """
  if path is None:
    raise FileNotFoundError(
        "clip_bpe tokenizer needs the path of CLIP's merges file "
        "(bpe_simple_vocab_16e6.txt.gz); got None")
  path = os.fspath(path)
  if not epath.Path(path).is_file():  # local or gs://
    raise FileNotFoundError(
        f"CLIP BPE merges file not found: {path!r} (expected OpenAI CLIP's "
        "bpe_simple_vocab_16e6.txt.gz, gzipped or plain text)")
  data = epath.Path(path).read_bytes()
  if data[:2] == b"\x1f\x8b":  # gzip magic number
    data = gzip.decompress(data)
  lines = data.decode("utf-8").split("\n")[1:max_merges + 1]
  merges = []
  for lineno, line in enumerate(lines, start=2):
    parts = line.split()
    if not parts:
      continue
    if len(parts) != 2:
      raise ValueError(f"{path}:{lineno}: a merge line has two symbols, "
                       f"got {line!r}")
    merges.append((parts[0], parts[1]))
  return merges


def bpe_merge(symbols: Sequence[str], ranks: dict[tuple[str, str], int]
              ) -> list[str]:
  """Applies merges to a symbol sequence, best-ranked adjacent pair first.

  Each round merges every non-overlapping occurrence (scanning left to right)
  of the single best pair present, then re-evaluates: this is exactly the
  reference's order, which matters when pairs overlap ("a a a").
  """
  word = list(symbols)
  while len(word) > 1:
    best, best_rank = None, None
    for pair in zip(word, word[1:]):
      rank = ranks.get(pair)
      if rank is not None and (best_rank is None or rank < best_rank):
        best, best_rank = pair, rank
    if best is None:
      break
    merged, i = [], 0
    while i < len(word):
      if i + 1 < len(word) and (word[i], word[i + 1]) == best:
        merged.append(word[i] + word[i + 1])
        i += 2
      else:
        merged.append(word[i])
        i += 1
    word = merged
  return word


class ClipBpeTokenizer:
  """CLIP BPE tokenizer: ``tok(texts) -> int32 [B, context_length]``.

  Rows are ``[sot] + ids + [eot]`` zero-padded; over-long captions are cut so
  that eot stays the last token (open_clip's behaviour; OpenAI's
  ``clip.tokenize`` does the same with ``truncate=True``).
  """

  def __init__(self, vocab_path: str, context_length: int = 77,
               cache_size: int = 1 << 17):
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    self.context_length = context_length
    self._cache_size = cache_size
    merges = read_merges(vocab_path)
    alphabet = byte_alphabet()
    self._byte_char = [c for _, c in sorted(alphabet)]  # indexed by byte value
    self._char_byte = {c: b for b, c in alphabet}
    chars = [c for _, c in alphabet]
    vocab = (chars + [c + END_OF_WORD for c in chars]
             + [a + b for a, b in merges] + [SOT_TOKEN, EOT_TOKEN])
    # dict() keeps the last id of a repeated token, as the reference does.
    # vocab_size is len(vocab) (= max id + 1) so the embedding table covers
    # every id; for CLIP's file there are no repeats and it equals
    # len(encoder) = 49408.
    self.encoder = dict(zip(vocab, range(len(vocab))))
    self.decoder = {i: t for t, i in self.encoder.items()}
    self.vocab_size = len(vocab)
    self.sot_id = self.encoder[SOT_TOKEN]
    self.eot_id = self.encoder[EOT_TOKEN]
    self._ranks = {pair: r for r, pair in enumerate(merges)}
    self._cache: dict[str, tuple[int, ...]] = {}

  def _piece_ids(self, piece: str) -> tuple[int, ...]:
    """Ids of one regex piece (already cleaned), memoised."""
    ids = self._cache.get(piece)
    if ids is not None:
      return ids
    if piece in (SOT_TOKEN, EOT_TOKEN):
      ids = (self.encoder[piece],)
    else:
      symbols = [self._byte_char[b] for b in piece.encode("utf-8")]
      symbols[-1] += END_OF_WORD
      ids = tuple(self.encoder[s] for s in bpe_merge(symbols, self._ranks))
    if len(self._cache) >= self._cache_size:  # bound memory on huge corpora
      self._cache.clear()
    self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """Text -> BPE ids, without sot/eot (the reference's ``encode``)."""
    ids: list[int] = []
    for piece in _PIECE_RE.findall(clean_text(text)):
      ids.extend(self._piece_ids(piece))
    return ids

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("pass a list of strings, not a single string")
    rows = [self.encode(t) for t in texts]
    return pack_ids(rows, self.sot_id, self.eot_id, self.context_length)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, for debugging: drops sot, stops at the first eot.

    Word boundaries come back as single spaces (so "cat." reads "cat ."),
    and bytes that do not form valid UTF-8 become U+FFFD.
    """
    symbols = []
    for i in ids:
      i = int(i)
      if i == self.eot_id:
        break
      if i != self.sot_id:
        symbols.append(self.decoder[i])
    text = "".join(symbols)
    data = bytearray()
    for word in text.split(END_OF_WORD):
      data.extend(self._char_byte[c] for c in word)
      data.extend(b" ")
    return data.decode("utf-8", errors="replace").strip()
