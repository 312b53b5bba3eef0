"""``python tests/aot_matrix.py OUT.json [--backend=cpu]``: ahead-of-time
compiles the CI matrix (tests/run/test_aot.py) in one process and writes one
record per (topology, case).

Run in its own process, with libtpu on PYTHONPATH only here, so no other test
ever loads libtpu, probes for a TPU or prints its warnings.
"""

import json
import sys
import time

import jax

from cvlg_jax import config as config_lib
from cvlg_jax.run import aot
from cvlg_jax.step.plan import make_plan

from configs import demo

# A bank of 3 M rows x 2 x 64 bf16 = 0.18 GiB per chip on 4 chips: large
# next to the tiny model's step, so a copy of it cannot hide in the noise.
BANK_ROWS = 3_000_000
# Compile time grows with the batch (256 costs ~1.7x of 64 on v5e); 64 rows
# still split over every chip and every mesh axis of the matrix.
BATCH = 64
# The bank bound with skip_nonfinite_steps is a property of the step, not of
# the chip: asserted on the first topology only, to keep CI's compile time
# inside its budget (the TPU compiles may add at most 4 minutes to CI).
FIRST_ONLY = ("psd_self_skip", "psd_bank_skip")


def _tiny(**overrides):
  c = demo.get_config("tiny,teacher=self,schedule=paper")
  c.train.batch_size, c.data.image_size = BATCH, 32
  for path, value in overrides.items():
    node = c
    *groups, key = path.split(".")
    for g in groups:
      node = node[g]
    node[key] = value
  return c


def cases(backend):
  """name -> (config, num_examples or None, compile evaluators)."""
  bank = dict(**{"loss.psd.teacher": "bank"})
  out = {
      "demo": (demo.get_config(""), None, True),
      "psd_self": (_tiny(), None, False),
      "psd_self_skip": (_tiny(**{"train.skip_nonfinite_steps": 1}), None, False),
      "psd_ema": (_tiny(**{"loss.psd.teacher": "ema"}), None, False),
      "psd_bank": (_tiny(**bank), BANK_ROWS, False),
      "psd_bank_skip": (_tiny(**bank, **{"train.skip_nonfinite_steps": 1}),
                        BANK_ROWS, False),
      "siglip": (_tiny(**{"loss.name": "siglip"}), None, False),
      "fsdp": (_tiny(**{"mesh.fsdp": 2}), None, False),
      "accum_streamed": (_tiny(**{"train.grad_accum_steps": 2,
                                  "loss.chunk_size": 16}), None, False),
      "rn": (_tiny(**{"model.name": "rn_tiny"}), None, False),
  }
  if backend == "cpu":
    out = {k: v for k, v in out.items() if k.startswith(("psd_self", "psd_bank"))}
  return out


def main(argv):
  out_path = argv[1]
  backend = "cpu" if "--backend=cpu" in argv else "tpu"
  topologies = (["cpu"] if backend == "cpu"
                else ["v5e:2x2", "v4:2x2x1", "v2:2x2"])
  records = []
  for topology in topologies:
    devices = aot.topology_devices(topology, backend)
    chosen = cases(backend)
    if topology != topologies[0]:
      chosen = {k: v for k, v in chosen.items() if k not in FIRST_ONLY}
    if topology == "v2:2x2":  # Colab's TPU runtime: the notebook's demo config
      chosen = {"colab_demo": chosen["demo"]}
    for name, (config, examples, evaluators) in chosen.items():
      t0 = time.time()
      config_lib.validate(config)
      plan = make_plan(config, len(devices), open_data=False,
                       num_examples=examples)
      report = aot.compile_run(plan, devices, topology=topology,
                               hbm_bytes=aot.hbm_of(topology, backend),
                               evaluators=evaluators)
      records.append(dict(case=name, seconds=time.time() - t0, **report.as_dict()))
      print(f"{topology} {name}: {time.time() - t0:.1f} s", flush=True)
  with open(out_path, "w") as f:
    json.dump(dict(jax=jax.__version__, records=records), f, indent=1)


if __name__ == "__main__":
  main(sys.argv)
