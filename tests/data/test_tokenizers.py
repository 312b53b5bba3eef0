"""Tokenizers: the shared contract, the builtin tokenizer and the registry,
SentencePiece (CLIP BPE: test_data_clip_bpe.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sentencepiece as spm

from cvlg_jax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from cvlg_jax.data.tokenizers import HashWordTokenizer, get_tokenizer

from tokenizer_fixtures import check_contract


# ----------------------------------------------------------------- builtin

def test_hash_word_tokenizer_contract():
  tok = HashWordTokenizer(vocab_size=100, context_length=6)
  texts = ["A red cube.", "", "one two three four five six seven", "RED cube"]
  ids = tok(texts)
  assert ids.shape == (4, 6)
  check_contract(ids, tok.EOT, 6)
  # "a red cube ." -> sot, 4 words, eot: exactly fills the row.
  assert ids[0, 0] == tok.SOT and ids[0, 5] == tok.EOT
  np.testing.assert_array_equal(ids[1], [1, 2, 0, 0, 0, 0])
  # Truncated: sot + 4 words + eot, eot kept last.
  assert ids[2, 5] == tok.EOT and (ids[2, 1:5] >= 3).all()
  # Case-insensitive and deterministic (CRC32, not Python's salted hash).
  np.testing.assert_array_equal(ids[0, 2:4], ids[3, 1:3])
  np.testing.assert_array_equal(tok(texts), ids)
  assert tok.word_id("red") == 3 + 4200685455 % 97  # zlib.crc32(b"red")
  assert ids.max() < tok.vocab_size
  with pytest.raises(TypeError):
    tok("a single string")
  with pytest.raises(ValueError):
    HashWordTokenizer(vocab_size=3)


# ------------------------------------------------------------ SentencePiece

_WORDS = ("a an the photo picture drawing of one two three four five red green "
          "blue yellow purple orange black white small large cube sphere cone "
          "ring star pyramid on in under near table floor grass sky with and "
          "shiny dark").split()


def _sentences(n, seed=0):
  rng = random.Random(seed)
  return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10)))
          for _ in range(n)]


def _train_sp(tmp_path, name, **ids):
  prefix = str(tmp_path / name)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_sentences(48)), model_prefix=prefix,
      vocab_size=80, character_coverage=1.0, hard_vocab_limit=False,
      num_threads=1, minloglevel=2, **ids)
  return prefix + ".model"


def test_sentencepiece_default_ids_are_shifted(tmp_path):
  # SentencePiece defaults: unk=0, bos=1, eos=2, no pad -> shift by one.
  path = _train_sp(tmp_path, "default")
  sp = spm.SentencePieceProcessor(model_file=path)
  tok = SentencePieceTokenizer(path, context_length=16)
  assert tok.offset == 1 and tok.eos_id == 3
  assert tok.vocab_size == sp.get_piece_size() + 1
  texts = _sentences(10, seed=1) + ["", "\u0436 cube"]  # "ж" is unknown
  ids = tok(texts)
  check_contract(ids, tok.eos_id, 16)
  assert ids.max() < tok.vocab_size
  for text, row in zip(texts, ids):
    ref = [i + 1 for i in sp.encode(text)][:15] + [3]
    np.testing.assert_array_equal(row[:len(ref)], ref)
  np.testing.assert_array_equal(ids[-2], [3] + [0] * 15)
  assert sp.unk_id() == 0 and 0 in sp.encode(texts[-1])
  assert 1 in ids[-1]  # <unk> (0) becomes 1, never padding


def test_sentencepiece_pad_zero_model_is_unshifted(tmp_path):
  # T5 / big_vision layout: pad=0, eos=1, unk=2 -> ids used as they are.
  path = _train_sp(tmp_path, "t5", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  sp = spm.SentencePieceProcessor(model_file=path)
  tok = get_tokenizer("sentencepiece", context_length=16, path=path)
  assert (tok.offset, tok.eos_id) == (0, 1)
  assert tok.vocab_size == sp.get_piece_size()
  text = _sentences(1, seed=2)[0]
  ref = sp.encode(text)[:15] + [1]
  row = tok([text])[0]
  np.testing.assert_array_equal(row, ref + [0] * (16 - len(ref)))


def test_sentencepiece_truncation_and_round_trip(tmp_path):
  tok = SentencePieceTokenizer(_train_sp(tmp_path, "m"), context_length=8)
  texts = _sentences(20, seed=3)
  long_text = " ".join(texts)
  full = tok.encode(long_text)
  assert len(full) > 8
  row = tok([long_text])[0]
  np.testing.assert_array_equal(row, full[:7] + [tok.eos_id])
  wide = SentencePieceTokenizer(_train_sp(tmp_path, "w"), context_length=64)
  for text, r in zip(texts, wide(texts)):
    assert wide.decode(r) == text
  with pytest.raises(TypeError):
    tok("one string")


def test_sentencepiece_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.model"):
    SentencePieceTokenizer(str(tmp_path / "missing.model"), context_length=8)
  no_eos = _train_sp(tmp_path, "noeos", eos_id=-1)
  with pytest.raises(ValueError, match="EOS"):
    SentencePieceTokenizer(no_eos, context_length=8)


def test_builtin_tokenizer_gives_every_synthetic_word_its_own_id():
  """Hashing alone put "blue" and "square" on one id at vocab 4096, which made
  "a blue circle" and "a square circle" indistinguishable to the model."""
  from cvlg_jax.data import synthetic
  tok = get_tokenizer("builtin", context_length=16,
                      known_words=synthetic.VOCABULARY)
  ids = [tok.word_id(w) for w in synthetic.VOCABULARY]
  assert len(set(ids)) == len(ids) == len(synthetic.VOCABULARY)
  assert max(ids) == 2 + len(ids)  # the first ids after the 3 special ones
  assert tok.word_id("zebra") > max(ids)  # other words hash past them
  for cls in synthetic.CLASS_NAMES:  # every caption word is known
    for template in synthetic.ZEROSHOT_TEMPLATES:
      row = tok([template.format(cls)])[0]
      assert set(row[1:(row != 0).sum() - 1]) <= set(ids)
  with pytest.raises(ValueError, match="known words"):
    HashWordTokenizer(vocab_size=10, known_words=synthetic.VOCABULARY)
