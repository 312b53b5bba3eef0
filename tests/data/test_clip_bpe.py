"""The CLIP BPE tokenizer (data/clip_bpe.py): known answers, the merge
window, a naive reference on random text, files, the ASCII fast path."""

from __future__ import annotations

import collections
import gzip
import html
import os
import random

import ftfy
import numpy as np
import pytest
import regex

from cvlg_jax.data import clip_bpe
from cvlg_jax.data.clip_bpe import ClipBpeTokenizer
from cvlg_jax.data.tokenizers import get_tokenizer

from tokenizer_fixtures import check_contract

# Hand-built merges; merge k gets id 512 + k. Byte ids: printable ASCII byte
# b -> b - 33, its word-final form ("x</w>") -> b - 33 + 256.
_MERGES = [
    "c a",        # 512 ca
    "ca t</w>",   # 513 cat</w>
    "t h",        # 514 th
    "th e</w>",   # 515 the</w>
    "i n",        # 516 in
    "' s</w>",    # 517 's</w>
    "b c</w>",    # 518 bc</w>   (better rank than "a b")
    "a b",        # 519 ab
    "a a",        # 520 aa
]
SOT, EOT = 521, 522


def _write_merges(path, merges, compress=True):
  text = "#version: 0.2\n" + "\n".join(merges) + "\n"
  if compress:
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")
  return str(path)


@pytest.fixture
def clip_tok(tmp_path):
  return ClipBpeTokenizer(_write_merges(tmp_path / "bpe.txt.gz", _MERGES),
                          context_length=12)


@pytest.mark.parametrize("text, expected", [
    ("cat", [513]),                       # fully merges (two ranks)
    ("the", [515]),
    ("cats", [512, 83, 338]),             # partial: "ca" only; t, s</w>
    ("in", [72, 333]),                    # "i n" needs a non-final n
    ("inn", [516, 333]),
    ("abc", [64, 518]),                   # rank 6 "b c</w>" beats rank 7
    ("aaaaa", [520, 520, 320]),           # non-overlapping, left to right
    ("THE CAT", [515, 513]),              # lower-cased
    ("cat.", [513, 269]),                 # punctuation is its own piece
    ("2023", [273, 271, 273, 274]),       # one piece per digit
    ("it's", [72, 339, 517]),             # 's contraction split off
    ("'sam", [517, 64, 332]),             # ... even at a word start
    ("''s", [6, 262, 338]),               # punctuation run "''" wins first
    ("  the&amp;amp;cat \n\t ", [515, 261, 513]),  # html x2, whitespace
    # ftfy leaves entities alone next to "<", so only the double unescape
    # turns "&amp;amp;" into "&" here.
    ("<i> &amp;amp; </i>", [283, 328, 285, 261, 27, 270, 328, 285]),
    ("the\u00a0 cat", [515, 513]),        # unicode whitespace collapses
    ("cafÃ©", [512, 69, 127, 358]),       # mojibake fixed by ftfy -> café
    ("café", [512, 69, 127, 358]),        # é = C3 A9 -> ids 127, 102+256
    ("\U0001F642", [172, 253, 247, 480]),  # F0 9F 99 82: 2-byte hidden map
    ("a <|endoftext|> cat", [320, EOT, 513]),  # reference keeps specials
    ("", []),
])
def test_clip_bpe_known_answers(clip_tok, text, expected):
  assert clip_tok.encode(text) == expected
  row = clip_tok([text])[0]
  np.testing.assert_array_equal(
      row, [SOT, *expected, EOT] + [0] * (12 - len(expected) - 2))


def test_clip_bpe_vocab_and_packing(clip_tok):
  assert clip_tok.vocab_size == 256 + 256 + len(_MERGES) + 2
  assert (clip_tok.sot_id, clip_tok.eot_id) == (SOT, EOT)
  ids = clip_tok(["the " * 100, "cat!!", "cat"])
  assert ids.dtype == np.int32 and ids.shape == (3, 12)
  np.testing.assert_array_equal(ids[0], [SOT] + [515] * 10 + [EOT])
  # "!" is byte id 0 in CLIP's vocabulary: an unmerged "!!" puts a 0 before
  # eot. The contract that still holds is "eot is the last non-zero".
  np.testing.assert_array_equal(ids[1, :5], [SOT, 513, 0, 256, EOT])
  check_contract(ids, EOT, 12)
  with pytest.raises(TypeError):
    clip_tok("cat")


def test_clip_bpe_decode(clip_tok):
  assert clip_tok.decode(clip_tok(["The cat."])[0]) == "the cat ."
  assert clip_tok.decode(clip_tok(["cafÃ© \U0001F642 42"])[0]) == (
      "café \U0001F642 4 2")
  # Truncation cuts the caption, not the end token.
  assert clip_tok.decode(clip_tok(["café \U0001F642 2023"])[0]) == (
      "café \U0001F642 2 0")


def test_clip_bpe_file_handling(tmp_path):
  gz = ClipBpeTokenizer(_write_merges(tmp_path / "a.gz", _MERGES))
  plain = ClipBpeTokenizer(_write_merges(tmp_path / "a.txt", _MERGES, False))
  texts = ["the cats' ring", "inn 42"]
  np.testing.assert_array_equal(gz(texts), plain(texts))
  assert gz.context_length == 77 and gz(texts).shape == (2, 77)
  missing = str(tmp_path / "nope" / "bpe_simple_vocab_16e6.txt.gz")
  with pytest.raises(FileNotFoundError, match="nope"):
    ClipBpeTokenizer(missing)
  with pytest.raises(FileNotFoundError):
    get_tokenizer("clip_bpe", context_length=8, path=None)
  bad = _write_merges(tmp_path / "bad.gz", ["a b c"])
  with pytest.raises(ValueError, match="two symbols"):
    ClipBpeTokenizer(bad)


def test_clip_bpe_uses_only_clip_merge_window(tmp_path):
  """Only lines 1..48894 count, giving CLIP's 49408 ids and sot/eot."""
  n = clip_bpe.MAX_MERGES + 10
  path = _write_merges(tmp_path / "big.gz", [f"q{i} z" for i in range(n)])
  tok = get_tokenizer("clip_bpe", context_length=77, path=path)
  assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (49408, 49406, 49407)
  assert "q48893z" in tok.encoder and "q48894z" not in tok.encoder


# An independent, deliberately naive re-implementation of CLIP's published
# algorithm, to compare against on random strings with learned merges.

def _naive_byte_table():
  keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172
          or 174 <= b <= 255]
  rest = [b for b in range(256) if b not in keep]
  return keep + rest, {b: chr(b) for b in keep} | {
      b: chr(256 + k) for k, b in enumerate(rest)}


_NAIVE_PAT = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)


def _naive_encode(text, merges):
  order, table = _naive_byte_table()
  base = [table[b] for b in order]
  vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
  ids = {t: i for i, t in enumerate(vocab)}
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  text = regex.sub(r"\s+", " ", text).strip().lower()
  out = []
  for piece in _NAIVE_PAT.findall(text):
    word = [table[b] for b in piece.encode("utf-8")]
    word[-1] += "</w>"
    while True:
      cands = [(merges.index(p), p) for p in zip(word, word[1:])
               if p in merges]
      if not cands:
        break
      first, second = min(cands)[1]
      i, new = 0, []
      while i < len(word):
        if word[i:i + 2] == [first, second]:
          new.append(first + second)
          i += 2
        else:
          new.append(word[i])
          i += 1
      word = new
    out += [ids[w] for w in word]
  return out


def _learn_merges(corpus, n):
  """Tiny BPE trainer: repeatedly merges the most frequent adjacent pair."""
  _, table = _naive_byte_table()
  words = collections.Counter()
  for piece in _NAIVE_PAT.findall(corpus.lower()):
    syms = [table[b] for b in piece.encode("utf-8")]
    syms[-1] += "</w>"
    words[tuple(syms)] += 1
  merges = []
  for _ in range(n):
    pairs = collections.Counter()
    for w, c in words.items():
      for p in zip(w, w[1:]):
        pairs[p] += c
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    merged = collections.Counter()
    for w, c in words.items():
      w, i, new = list(w), 0, []
      while i < len(w):
        if tuple(w[i:i + 2]) == best:
          new.append(w[i] + w[i + 1])
          i += 2
        else:
          new.append(w[i])
          i += 1
      merged[tuple(new)] += c
    words = merged
  return merges


def test_clip_bpe_matches_naive_reference_on_random_text(tmp_path):
  rng = random.Random(0)
  alphabet = list("abcdeabcde  aabb.,!?'-&;0123") + [
      "é", "ß", "Ж", "中", "\U0001F642", "\u00a0", "'s", "'re", "&amp;",
      "Ã©", "AB", "\t"]

  def sample():
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))

  merges = _learn_merges(" ".join(sample() for _ in range(300)), 60)
  assert len(merges) == 60
  path = _write_merges(tmp_path / "learned.gz", [" ".join(m) for m in merges])
  tok = ClipBpeTokenizer(path, context_length=40)
  for _ in range(300):
    text = sample()
    assert tok.encode(text) == _naive_encode(text, merges), repr(text)


def test_clean_text_ascii_fast_path_equals_ftfy():
  # clean_text skips ftfy for printable ASCII without "&"; on such text ftfy
  # must be the identity, or ids would change. Every printable ASCII char,
  # incl. quotes, "<", backslashes and runs of spaces, in random strings.
  rng = random.Random(0)
  printable = [chr(c) for c in range(32, 127) if chr(c) != "&"]
  texts = ["".join(rng.choice(printable) for _ in range(rng.randint(0, 60)))
           for _ in range(3000)]
  texts += ["don't", "``quoted''", "a -- b", "<b>x</b>", "x\\n", "  "]
  for text in texts:
    assert text.isascii() and text.isprintable() and "&" not in text
    assert ftfy.fix_text(text) == text, repr(text)
  # And the slow path still runs where it matters.
  assert clip_bpe.clean_text("the&amp;amp;cat") == "the&cat"
  assert clip_bpe.clean_text("caf\u00c3\u00a9\tBar") == "caf\u00e9 bar"


def _real_bpe() -> str | None:
  """CLIP's real merges file: $CVLG_CLIP_BPE, or the copy open_clip ships
  (installed with requirements-interop.txt)."""
  if os.environ.get("CVLG_CLIP_BPE"):
    return os.environ["CVLG_CLIP_BPE"]
  import importlib.util
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0],
                      "bpe_simple_vocab_16e6.txt.gz")
  return path if os.path.exists(path) else None


_REAL_BPE = _real_bpe()


@pytest.mark.skipif(not _REAL_BPE, reason="needs CLIP's real merges file: set "
                    "CVLG_CLIP_BPE, or install requirements-interop.txt")
def test_clip_bpe_real_vocabulary_ids():
  # Expected ids produced by openai/CLIP's SimpleTokenizer.
  tok = ClipBpeTokenizer(_REAL_BPE)
  assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (49408, 49406, 49407)
  assert tok.encode("a photo of a cat.") == [320, 1125, 539, 320, 2368, 269]
  assert tok.encode("It's 2023!! café \U0001F642") == [
      585, 568, 273, 271, 273, 274, 748, 15304, 14860]
  assert tok.encode("naÃ¯ve résumé") == [1097, 35689, 563, 29106, 7054, 4166]
