"""Will the paper configs fit, and how fast could they go? Compiled for TPU.

    python benchmarks/scale_plan.py [--configs=cc3m,cc12m,yfcc15m]
        [--models=vit_b32,vit_b16,rn50,vit_l14] [--json=benchmarks/scale_plan.json]
    python benchmarks/scale_plan.py --resume   # compile only what the JSON lacks
    python benchmarks/scale_plan.py --markdown=benchmarks/scale_plan.json
    python benchmarks/scale_plan.py --write_docs=benchmarks/scale_plan.json

Every shipped pre-training config, with each model at the config's global
batch and the bank teacher, is compiled ahead of time (``cvlg_jax.run.aot``,
libtpu on the path, no TPU) for the slice the README recommends for it
(``RECOMMENDED``) and on one smaller and one larger. Per chip: HBM by part
and headroom, FLOPs and collective bytes per step, and a roofline lower
bound on the step time: max(FLOPs / peak, HBM bytes / bandwidth, collective
link bytes / ICI bandwidth), with the model-FLOPs utilisation that bound
implies (model FLOPs = 3 x the forward pass, which the evaluators' encoders
compile at the train batch). ``--markdown`` prints BENCHMARKS.md's table
from a JSON file, so the table is never typed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from cvlg_jax import config as config_lib  # noqa: E402
from cvlg_jax.models.registry import MODELS as REGISTRY  # noqa: E402
from cvlg_jax.run import aot  # noqa: E402
from cvlg_jax.step import bank  # noqa: E402
from cvlg_jax.step.plan import make_plan  # noqa: E402
from scripts.generated import splice  # noqa: E402

from configs import cc3m, cc12m, yfcc15m  # noqa: E402

CONFIGS = {"cc3m": cc3m, "cc12m": cc12m, "yfcc15m": yfcc15m}
# The slice each config is planned for (README "Will it fit?"), and one
# smaller and one larger, as get_topology_desc names them (v4: megacore chips).
RECOMMENDED = {"cc3m": "v4:2x2x4", "cc12m": "v4:2x4x4", "yfcc15m": "v4:2x4x4"}
NEIGHBOURS = {"v4:2x2x2": ("v4:2x2x1", "v4:2x2x4"),
              "v4:2x2x4": ("v4:2x2x2", "v4:2x4x4"),
              "v4:2x4x4": ("v4:2x2x4", "v4:4x4x4")}
MODELS = ("vit_b32", "rn50", "vit_b16", "vit_l14")  # cheapest compile first
MODELS_DIM = {m: REGISTRY[m]["embed_dim"] for m in MODELS}
HEADROOM = 0.10
# Link bytes per result byte of a ring collective on n chips, as n grows.
RING = {"all-gather": 1.0, "reduce-scatter": 1.0, "all-reduce": 2.0,
        "all-to-all": 1.0, "collective-permute": 1.0}


def roofline(report: aot.Report, chip: aot.Chip) -> dict:
  """Lower bounds on one step's time (seconds) from each resource."""
  compute = report.train_flops / (chip.peak_tflops * 1e12)
  memory = report.train_bytes_accessed / (chip.hbm_gbps * 1e9)
  link = sum(RING[k] * v for k, v in report.collectives().items())
  comm = None if chip.ici_gbps is None else link / (chip.ici_gbps * 1e9)
  bound = max(t for t in (compute, memory, comm) if t is not None)
  model_flops = 3 * sum(report.program(n).flops
                        for n in ("encode_images", "encode_texts"))
  return dict(compute_s=compute, hbm_s=memory, ici_s=comm, bound_s=bound,
              mfu_bound=model_flops / (bound * chip.peak_tflops * 1e12),
              model_flops_per_chip=model_flops)


def compile_one(name: str, model: str, topology: str) -> aot.Report:
  module = CONFIGS[name]
  config = module.get_config(f"model={model}")
  config_lib.validate(config, paths=False)
  devices = aot.topology_devices(topology)
  plan = make_plan(config, len(devices), open_data=False,
                   num_examples=module.NUM_EXAMPLES)
  return config, aot.compile_run(plan, devices, topology=topology,
                                 hbm_bytes=aot.hbm_of(topology, "tpu"))


def record(name, model, config, report, compiled_for, compile_s) -> dict:
  """One table row; ``report`` was compiled with ``compiled_for``'s bank.

  The three configs share the model, batch and recipe and differ only in
  the bank's rows, an argument of the step that is updated in place (the
  bank's share is exact arithmetic, and the step's scratch does not grow
  with it: tests/run/test_aot.py), so one compile per (model, slice) with
  the largest bank serves all three, the bank's bytes swapped per config.
  """
  r = report.as_dict()
  module = CONFIGS[name]
  share = bank.bytes_per_device(module.NUM_EXAMPLES, MODELS_DIM[model],
                                config.loss.psd.bank_dtype, report.num_devices)
  delta = share - r["parts"]["bank"]
  r["parts"] = dict(r["parts"], bank=share)
  r["peak_bytes"] += delta
  r["fits"] = r["peak_bytes"] <= r["hbm_bytes"]
  chip = aot.CHIPS[aot.generation(report.topology)]
  return dict(config=name, model=model, global_batch=config.train.batch_size,
              remat=config.model.remat, compiled_with_bank_of=compiled_for,
              compile_s=compile_s, headroom=1 - r["peak_bytes"] / r["hbm_bytes"],
              **r, **roofline(report, chip))


def markdown(records: list[dict]) -> str:
  gib = lambda n: f"{n / 2**30:.2f}"  # noqa: E731
  lines = ["| config | model | slice (chips) | batch / chip | params+opt | bank | "
           "peak GiB / HBM | headroom | TFLOP / step / chip | collectives MiB / chip "
           "| step ≥ (ms) | bound by | MFU at bound |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  order = lambda r: (list(CONFIGS).index(r["config"]),  # noqa: E731
                     MODELS.index(r["model"]), r["num_devices"])
  for r in sorted(records, key=order):
    p = r["parts"]
    terms = {"compute": r["compute_s"], "HBM": r["hbm_s"], "ICI": r["ici_s"] or 0}
    lines.append(
        f"| {r['config']} | {r['model']}{' (remat)' if r['remat'] else ''} | "
        f"{r['topology']} ({r['num_devices']}) | "
        f"{r['global_batch'] // r['num_devices']} | "
        f"{gib(p['params'] + p['opt_state'])} | {gib(p['bank'])} | "
        f"{gib(r['peak_bytes'])} / {gib(r['hbm_bytes'])} | "
        f"{100 * r['headroom']:.0f} % | {r['train_flops_per_chip'] / 1e12:.2f} | "
        f"{sum(r['collective_bytes_per_chip'].values()) / 2**20:.0f} | "
        f"{1e3 * r['bound_s']:.0f} | {max(terms, key=terms.get)} | "
        f"{100 * r['mfu_bound']:.0f} % |")
  return "\n".join(lines)


DOCS = {  # file -> (begin marker, end marker, rows it shows)
    "BENCHMARKS.md": ("<!-- scale_plan:begin -->", "<!-- scale_plan:end -->", "all"),
    "README.md": ("<!-- scale_plan:recommended:begin -->",
                  "<!-- scale_plan:recommended:end -->", "recommended"),
}


def docs_with_tables(records: list[dict], repo: str) -> dict[str, str]:
  """Each file of :data:`DOCS` with its table regenerated from ``records``."""
  out = {}
  for name, (begin, end, rows) in DOCS.items():
    text = open(os.path.join(repo, name)).read()
    shown = [r for r in records if rows == "all" or r["recommended"]]
    out[name] = splice(text, begin, end, markdown(shown), name)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--slices", default="all", help="all | recommended")
  parser.add_argument("--json", default="benchmarks/scale_plan.json")
  parser.add_argument("--markdown", default="", help="print the table of this JSON")
  parser.add_argument("--write_docs", default="",
                      help="regenerate the tables in BENCHMARKS.md and README.md "
                      "from this JSON")
  parser.add_argument("--resume", action="store_true",
                      help="keep --json's records and compile only what it lacks")
  args = parser.parse_args(argv)
  if args.markdown:
    print(markdown(json.load(open(args.markdown))["records"]))
    return 0
  if args.write_docs:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    docs = docs_with_tables(json.load(open(args.write_docs))["records"], repo)
    for name, text in docs.items():
      with open(os.path.join(repo, name), "w") as f:
        f.write(text)
    return 0
  names = args.configs.split(",")
  wanted = {}  # (model, slice) -> the configs that need it
  # Every recommended slice first (the fit check), then the neighbours.
  passes = [lambda rec: [rec]]
  if args.slices == "all":
    passes.append(lambda rec: list(NEIGHBOURS[rec]))
  for slices_of in passes:
    for model in args.models.split(","):
      for name in names:
        for topology in slices_of(RECOMMENDED[name]):
          wanted.setdefault((model, topology), []).append(name)
  records = []
  if args.resume and os.path.exists(args.json):
    records = json.load(open(args.json))["records"]
  done = {(r["model"], r["topology"]) for r in records}
  for (model, topology), users in wanted.items():
    if (model, topology) in done:
      continue
    largest = max(users, key=lambda n: CONFIGS[n].NUM_EXAMPLES)
    t0 = time.time()
    config, report = compile_one(largest, model, topology)
    seconds = time.time() - t0
    for name in users:
      r = record(name, model, CONFIGS[name].get_config(f"model={model}"), report,
                 largest, seconds)
      r["recommended"] = topology == RECOMMENDED[name]
      records.append(r)
      print(f"{name} {model} {topology}: peak {r['peak_bytes'] / 2**30:.2f} GiB "
            f"({100 * r['headroom']:.0f} % free), step >= {1e3 * r['bound_s']:.0f} "
            f"ms (compiled in {seconds:.0f} s)", flush=True)
    with open(args.json, "w") as f:  # after every compile: a long run
      json.dump(dict(records=records), f, indent=1)
    # Each ViT-L/14 compile holds GiBs of host memory in JAX's caches; a
    # run of them grew to 20 GiB and was OOM-killed on a 24 GiB host.
    del config, report
    jax.clear_caches()
    gc.collect()
  print(markdown(records))
  short = [r for r in records if r["recommended"] and r["headroom"] < HEADROOM]
  for r in short:
    print(f"{r['config']} {r['model']} on {r['topology']}: only "
          f"{100 * r['headroom']:.0f} % HBM headroom", file=sys.stderr)
  return 1 if short else 0


if __name__ == "__main__":
  sys.exit(main())
