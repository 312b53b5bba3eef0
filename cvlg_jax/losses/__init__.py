"""Contrastive losses as pure functions: CLIP / PSD (softmax) and SigLIP
(sigmoid), dense or streamed, single-device or sharded, and PSD's schedule.

The public API (``cvlg_jax.losses.contrastive_loss`` and friends) is
re-exported here from :mod:`.contrastive` (the losses), :mod:`.streamed` (the
O(n x chunk) kernel) and :mod:`.schedule` (alpha and the distilled subset).
"""

from cvlg_jax.losses.contrastive import (
    KINDS, LOSS_NAMES, LossInputs, LossSpec, Teacher, contrastive_loss,
    parse_loss_name, sharded_contrastive_loss)
from cvlg_jax.losses.schedule import alpha_schedule, distill_mask

__all__ = ["KINDS", "LOSS_NAMES", "LossInputs", "LossSpec", "Teacher",
           "contrastive_loss", "parse_loss_name", "sharded_contrastive_loss",
           "alpha_schedule", "distill_mask"]
