"""What every tokenizer must give the text tower, checked the same way for each."""

import numpy as np


def check_contract(ids, eot, context_length):
  """dtype/shape, eot present and last non-zero, zeros only after it."""
  assert ids.dtype == np.int32 and ids.shape[1] == context_length
  for row in ids:
    nonzero = np.flatnonzero(row)
    last = nonzero[-1]
    assert row[last] == eot
    assert not row[last + 1:].any()
