"""YFCC15M (the CLIP subset of YFCC100M with English titles/descriptions): ~14.8M pairs.

    python -m cvlg_jax.main --config=configs/yfcc15m.py:data_dir=DIR,vocab=BPE_FILE --workdir=WORKDIR

See configs/common.py for the arguments (model=rn50, loss=clip, epochs, batch, ...).
Set `num_examples` to the row count in your shards' report if it differs
(it only sets the number of steps per epoch).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.common import pretrain_config  # noqa: E402

NUM_EXAMPLES = 14_800_000


def get_config(arg=None):
  return pretrain_config(NUM_EXAMPLES, arg)
