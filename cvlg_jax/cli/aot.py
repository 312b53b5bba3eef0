"""``python -m cvlg_jax.aot``: will this config fit that slice? Compiled, not guessed.

    python -m cvlg_jax.aot --config=configs/cc12m.py:data_dir=D,vocab=V \\
        --topology=v4:2x2x4 --num_examples=10968539 [--config.key=value ...]
    python -m cvlg_jax.aot --config=configs/demo.py --backend=cpu   # no libtpu

Compiles, on this host (a laptop or CI: no TPU needed, only the ``libtpu``
wheel), exactly the programs a run on ``--topology`` executes: the train step
(with its bank read, EMA, gradient accumulation, FSDP and remat as
configured) and the evaluators' encoders, from abstract inputs. Prints, per
chip, the train state by part, the batch, each program's temporaries and
outputs, the peak against the chip's HBM, FLOPs and collective bytes per
step. ``--json=PATH`` writes the same as one record. Exit codes: 0 fits, 2
invalid config, 6 does not fit (one line: the largest contributors and the
knobs that shrink them).
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from cvlg_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "v5e:2x2", "A TPU slice as jax.experimental.topologies names "
    "it: v2:2x2, v3:2x2, v4:2x2x1, v5e:4x4, v5p:2x2x1, v6e:8x8, ...")
_BACKEND = flags.DEFINE_enum("backend", "tpu", ["tpu", "cpu"], "tpu: compile "
                             "for --topology (needs libtpu); cpu: for this "
                             "host's CPU devices (8 with XLA_FLAGS=--xla_force"
                             "_host_platform_device_count=8).")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 0, "Training examples (sizes the bank and the epochs) "
    "when the data is not on this host; 0: open the config's source.")
_JSON = flags.DEFINE_string("json", "", "Also write the report here.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", 0.0, "Per-chip memory to check "
                               "against instead of the chip's HBM (a budget; "
                               "with --backend=cpu the only check).")
_EVALUATORS = flags.DEFINE_bool("evaluators", True, "Also compile the "
                                "evaluators' encode functions.")
flags.mark_flags_as_required(["config"])

EXIT_DOES_NOT_FIT = common.EXIT_MEMORY
GiB = 2 ** 30


def _gib(n) -> str:
  return f"{n / GiB:8.3f} GiB" if n >= GiB / 10 else f"{n / 2**20:8.2f} MiB"


def format_report(report) -> str:
  lines = [f"{report.topology}: {report.num_devices} x {report.device_kind}, "
           f"mesh {report.mesh}; per chip:"]
  for name, n in report.parts.items():
    lines.append(f"  {name:<28} {_gib(n)}")
  for p in report.programs:
    lines.append(f"  {p.name:<16} temporaries {_gib(p.temp_bytes)}  outputs "
                 f"{_gib(p.output_bytes)} (donated {_gib(p.alias_bytes)})  "
                 f"{p.flops / 1e12:.3f} TFLOP")
  cap = ("" if report.hbm_bytes is None else
         f" of {report.hbm_bytes / GiB:.0f} GiB HBM "
         f"({100 * report.peak_bytes / report.hbm_bytes:.0f} %)")
  lines.append(f"  peak                         {_gib(report.peak_bytes)}{cap}")
  lines.append(f"  train step: {report.train_flops / 1e12:.3f} TFLOP per chip; "
               "collectives per chip: " + ", ".join(
                   f"{k} {v / 2**20:.1f} MiB" for k, v in report.collectives().items()
                   if v))
  return "\n".join(lines)


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from cvlg_jax import config as config_lib
  from cvlg_jax.run import aot
  from cvlg_jax.step.plan import make_plan
  config, tpu = common.config_value(_CONFIG), _BACKEND.value == "tpu"
  topology = _TOPOLOGY.value if tpu else "cpu"
  try:
    devices = aot.topology_devices(_TOPOLOGY.value, _BACKEND.value)
  except (ValueError, ImportError, RuntimeError) as e:
    common.fail(common.EXIT_USAGE,
                f"cvlg_jax.aot: --topology={_TOPOLOGY.value}: {e} (--backend=tpu "
                "needs libtpu: pip install 'libtpu==0.0.42.*'; README 'Will it fit?')")
  hbm = (int(_HBM_GIB.value * GiB) if _HBM_GIB.value > 0
         else aot.hbm_of(_TOPOLOGY.value, _BACKEND.value))
  try:
    config_lib.validate(config, paths=False)  # nothing is read
    plan = make_plan(config, len(devices), open_data=False,
                     num_examples=_NUM_EXAMPLES.value or None)
  except config_lib.ConfigError as e:
    common.fail(common.EXIT_USAGE, f"Invalid config: {e}")
  report = aot.compile_run(plan, devices, topology=topology, hbm_bytes=hbm,
                           evaluators=_EVALUATORS.value)
  print(format_report(report), flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(report.as_dict(), f, indent=1)
  if report.fits is False:
    common.fail(EXIT_DOES_NOT_FIT, aot.summary_line(report))




def run():
  """The command line (``python -m cvlg_jax.aot``)."""
  app.run(main, flags_parser=common.parse_flags)
