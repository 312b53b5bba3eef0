"""What every doc generator shares: splice a generated block between its
markers, and write the result or check that the file already holds it.

Used by scripts/layout.py, scripts/error_table.py, scripts/config_reference.py
and benchmarks/scale_plan.py, whose tests run ``--check``.
"""

from __future__ import annotations

import os
import sys


def splice(text: str, begin: str, end: str, body: str, where: str) -> str:
  """``text`` with what lies between ``begin`` and ``end`` (markers kept,
  one per line around it) replaced by ``body``; ``where`` names the file in
  the error when a marker is missing."""
  start, stop = text.find(begin), text.find(end)
  if start < 0 or stop < 0:
    raise ValueError(f"{where} lacks the {begin} ... {end} markers")
  return text[:start] + begin + "\n" + body + "\n" + end + text[stop + len(end):]


def write_or_check(path: str, fresh: str, argv, *, what: str,
                   command: str) -> int | None:
  """``--write``: ``fresh`` into ``path``; ``--check``: 1 (and one line on
  stderr naming ``what`` and the ``command`` that mends it) if ``path`` does
  not already hold ``fresh``; else 0. None when neither flag was given."""
  if "--write" in argv:
    with open(path, "w") as f:
      f.write(fresh)
    return 0
  if "--check" in argv:
    current = open(path).read() if os.path.exists(path) else None
    if current != fresh:
      print(f"{what} is stale: run python {command} --write", file=sys.stderr)
      return 1
    return 0
  return None
