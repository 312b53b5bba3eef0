"""Before any TPU VM exists: does each run fit the slice? Compiled here.

``launch.sweep --backend=tpu_vm`` calls :func:`check_runs` first (unless
``--noaot_check``): every run's config, with its overrides, is compiled on
this machine for the VM's topology by ``python -m cvlg_jax.aot`` (it needs
only the ``libtpu`` wheel, no TPU), so a run that cannot fit fails in
seconds here instead of after the VM has booted and installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

from launch import spec

# Chips in a slice laid out as get_topology_desc names them. 2-D tori
# (v2, v3, v5e, v6e) and 3-D (v4, v5p), each doubling one axis at a time.
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
       128: "8x16", 256: "16x16"}
_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
       128: "4x4x8", 256: "4x8x8", 512: "8x8x8", 1024: "8x8x16"}
# accelerator-type prefix -> (topology generation, units per chip in the
# type's number: v2/v3/v4/v5p count TensorCores, 2 per chip; v5e/v6e chips).
_GENERATIONS = {"v2": ("v2", 2, _2D), "v3": ("v3", 2, _2D), "v4": ("v4", 2, _3D),
                "v5p": ("v5p", 2, _3D), "v5litepod": ("v5e", 1, _2D),
                "v5e": ("v5e", 1, _2D), "v6e": ("v6e", 1, _2D)}


def topology_of(accelerator_type: str) -> str:
  """``v4-32`` -> ``v4:2x2x4``; ``v5litepod-16`` -> ``v5e:4x4``."""
  prefix, _, count = accelerator_type.rpartition("-")
  if prefix not in _GENERATIONS or not count.isdigit():
    raise ValueError(f"--accelerator_type={accelerator_type!r}: not a TPU "
                     f"type this check knows ({', '.join(_GENERATIONS)}-N)")
  gen, per_chip, shapes = _GENERATIONS[prefix]
  chips = int(count) // per_chip
  if chips not in shapes:
    raise ValueError(f"--accelerator_type={accelerator_type!r}: {chips} chips "
                     f"is not a slice shape ({sorted(shapes)})")
  return f"{gen}:{shapes[chips]}"


def aot_command(config: str, run: spec.Run, topology: str,
                num_examples: int = 0) -> list[str]:
  """The ``cvlg_jax.aot`` argv that compiles ``run`` as the VM would run it."""
  flags = [f for f in spec.trainer_flags(config, run.workdir, run.overrides)
           if not f.startswith("--workdir=")]
  return [sys.executable, "-m", "cvlg_jax.aot", f"--topology={topology}",
          *([f"--num_examples={num_examples}"] if num_examples else []),
          "--noevaluators", *flags]


def check_runs(config: str, runs: list[spec.Run], accelerator_type: str, *,
               num_examples: int = 0, out=sys.stdout) -> list[str]:
  """Compiles every run for the VM's topology; returns the names of those
  that do not fit or do not compile, each with cvlg_jax.aot's one line."""
  topology = topology_of(accelerator_type)
  failed = []
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  for run in runs:
    proc = subprocess.run(aot_command(config, run, topology, num_examples),
                          cwd=spec.REPO, env=env, capture_output=True, text=True)
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode:
      failed.append(f"{run.name}: {last}")
      print(f"# {run.name}: does not pass on {topology}: {last}", file=out, flush=True)
    else:
      print(f"# {run.name}: fits {topology}", file=out, flush=True)
  return failed
