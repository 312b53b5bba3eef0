"""CLIP vs PSD on the offline demo under caption noise, three seeds each.

    python -m launch.sweep --sweep=launch/sweeps/demo_clip_vs_psd.py --parallel=2
    python -m launch.sweep --sweep=launch/sweeps/demo_clip_vs_psd.py --report

18 runs of ``configs/demo.py`` (a few CPU-minutes each). The claim under test:
PSD's soft targets keep zero-shot accuracy up as more captions are noisy.
"""

from __future__ import annotations

from launch.spec import Sweep, grid


def get_sweep():
  return Sweep(config="configs/demo.py", runs=grid(**{
      "loss.name": ["clip", "psd"],
      "data.caption_noise": [0.0, 0.2, 0.4],
      "train.seed": [0, 1, 2],
  }))
