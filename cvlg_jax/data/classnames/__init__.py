"""Class names and prompt templates for the zero-shot sets, one module per family.

Where TFDS ships label names in its builders' metadata we derive readable names
from them (``readable``); where it does not (CIFAR, STL-10, EuroSAT wording)
the names are written here. Templates are this project's own wording.
"""

from __future__ import annotations


def readable(label: str) -> str:
  """'baby_back_ribs' -> 'baby back ribs'; keeps case (breed / model names)."""
  return " ".join(label.replace("_", " ").split())
