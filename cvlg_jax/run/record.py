"""What a run writes about itself: the resolved config and where it ran.

``config.json`` and ``run_info.json`` in the workdir, rewritten at every
(re)start, so a run can be reproduced (and evaluated with its own config)
later.
"""

from __future__ import annotations

import json
import os
import time

import jax

from cvlg_jax import fileio


def _write_json(path, obj):
  """Atomically (a kill mid-write leaves the old file, not a torn one)."""
  fileio.write_text_atomic(
      path, obj if isinstance(obj, str) else json.dumps(obj, indent=2))


def _git(*args):
  import subprocess
  try:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def _changes(workdir, resumed_from, changed) -> list:
  """Earlier resumes' changes (from the previous run_info.json) plus this one's."""
  path = os.path.join(workdir, "run_info.json")
  earlier = []
  if resumed_from and fileio.exists(path):
    earlier = json.loads(fileio.read_text(path)).get("changed_on_resume") or []
  if changed:
    earlier = earlier + [dict(step=resumed_from, changes=changed)]
  return earlier


def write(config, workdir, mesh, *, resumed_from: int | None = None,
          resolved: dict | None = None, changed_on_resume: dict | None = None):
  """``config.json`` (resolved) and ``run_info.json`` (code, versions, devices,
  what the run plan resolved, and the config keys a resume changed: {key:
  [old, new]}), for reproducing the run later. Rewritten at every (re)start;
  the keys changed by earlier resumes are kept."""
  import importlib.metadata as md
  import sys
  from cvlg_jax import __version__
  _write_json(os.path.join(workdir, "config.json"),
              config.to_json_best_effort(indent=2, sort_keys=True))
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "ml_collections", "clu", "numpy", "tensorflow", "tensorflow-cpu"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  commit = _git("rev-parse", "HEAD")
  dirty = _git("status", "--porcelain", "--untracked-files=no")
  record = dict(cvlg_jax=__version__, git_commit=commit,
                git_dirty=None if dirty is None else bool(dirty),
                versions=versions, python=sys.version.split()[0], argv=sys.argv,
                devices=[str(d) for d in jax.devices()],
                device_kind=jax.devices()[0].device_kind,
                process_count=jax.process_count(),
                mesh={k: int(v) for k, v in mesh.shape.items()},
                resumed_from_step=resumed_from, resolved=resolved,
                changed_on_resume=_changes(workdir, resumed_from, changed_on_resume),
                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  _write_json(os.path.join(workdir, "run_info.json"), record)
