"""Where metrics go: ``WORKDIR/metrics.jsonl`` plus clu's writers (TensorBoard).

The JSONL file is the machine-readable record (sweep reports and plots read
it). On resume from step k, entries after k are dropped first: those steps
are about to be re-run, and their new values replace the old ones instead of
appearing twice.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from cvlg_jax import fileio


def _jsonable(v):
  v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf; keep the information readable
  return v


def read_jsonl(path: str) -> list[dict]:
  if not fileio.exists(path):
    return []
  rows = []
  for line in fileio.read_text(path).splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      break  # a line torn by a kill: everything after it is suspect
  return rows


class MetricsLog:
  """Appends one JSON object per logged step, and mirrors it to clu.

  ``write_file=False`` (every process but the first, in multi-host runs)
  only feeds the writer: one process owns the shared file.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0, writer=None,
               write_file: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl") if write_file else None
    self.writer = writer
    if self.path is None:
      return
    kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
    # Atomic: a kill here loses no kept line.
    fileio.write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def write(self, step: int, metrics: dict) -> None:
    row = {"step": int(step), **{k: _jsonable(v) for k, v in sorted(metrics.items())}}
    if self.path is not None:
      fileio.append_text(self.path, json.dumps(row) + "\n")
    if self.writer is not None:
      self.writer.write_scalars(int(step), {k: float(np.asarray(v)) for k, v in
                                            metrics.items() if np.ndim(v) == 0})

  def flush(self):
    if self.writer is not None:
      self.writer.flush()
