"""Conceptual 12M: ~10M pairs downloadable of 12.4M.

    python -m cvlg_jax.main --config=configs/cc12m.py:data_dir=DIR,vocab=BPE_FILE --workdir=WORKDIR

See configs/common.py for the arguments (model=rn50, loss=clip, epochs, batch, ...).
Set `num_examples` to the row count in your shards' report if it differs
(it only sets the number of steps per epoch).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.common import pretrain_config  # noqa: E402

NUM_EXAMPLES = 10_000_000


def get_config(arg=None):
  return pretrain_config(NUM_EXAMPLES, arg)
