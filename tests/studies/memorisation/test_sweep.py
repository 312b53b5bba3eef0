"""The memorisation sweep's own keys reach its grid as intended."""

from __future__ import annotations

import os

import pytest

from launch import spec
from studies.memorisation import report as mr

SWEEP = os.path.join(spec.REPO, "studies/memorisation/sweep.py")


def _methods(arg):
  return [(mr.method_of(r).name, mr.method_of(r).schedule,
           r["data.caption_noise"], r["train.seed"])
          for r in spec.load_sweep(f"{SWEEP}:{arg}").runs]


def test_teachers_key_keeps_clip_and_the_named_teachers():
  runs = _methods("teachers=bank,noises=0+0.4,seeds=2")
  assert runs == [
      ("clip", None, 0.0, 0), ("bank", "early", 0.0, 0),
      ("clip", None, 0.4, 0), ("bank", "early", 0.4, 0),
      ("clip", None, 0.0, 1), ("bank", "early", 0.0, 1),
      ("clip", None, 0.4, 1), ("bank", "early", 0.4, 1),
      ("bank", "paper", 0.4, 0)]  # the selection run the grid lacks
  full = _methods("seeds=1,noises=0.4")
  assert {m[0] for m in full} == {"clip", "self", "ema", "bank"}
  assert len(full) == 4 + 2  # + the unchosen ema and bank schedules
  with pytest.raises(ValueError, match=r"teachers \['student'\] unknown"):
    spec.load_sweep(f"{SWEEP}:teachers=student")
