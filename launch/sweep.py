"""Config sweeps: ``python -m launch.sweep --sweep=launch/sweeps/<name>.py``.

    # see exactly what would run, then run 2 at a time on this machine
    python -m launch.sweep --sweep=launch/sweeps/demo_clip_vs_psd.py --dry_run
    python -m launch.sweep --sweep=launch/sweeps/demo_clip_vs_psd.py --parallel=2
    # final metrics of every run -> report.csv + report.md (mean ± std over seeds),
    # plus whatever the sweep's own report hook writes
    python -m launch.sweep --sweep=launch/sweeps/demo_clip_vs_psd.py --report
    # a sweep file's argument (here: which data set); default root runs/NAME-ARG
    python -m launch.sweep --sweep=studies/noise_robustness/sweep.py:dataset=cifar10
    # the same sweep on a TPU VM, workdirs on GCS
    python -m launch.sweep --sweep=... --backend=tpu_vm --root=gs://BUCKET/sweeps/x \\
        --tpu_name=cvlg --zone=us-central2-b --accelerator_type=v4-8 --dry_run

Each run's workdir is ``ROOT/<overrides as key=value,...>``; launching again
skips finished runs (local) or resumes / no-ops them (TPU VM), so the same
command picks a sweep up after an interruption or a preemption.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from launch import fit_check, local, report, spec, tpu_vm

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep(); "
                             "FILE:ARG calls get_sweep(ARG).")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "tpu_vm"],
                             "Where the runs execute.")
_ROOT = flags.DEFINE_string("root", "", "Sweep root; one workdir per run under "
                            "it. Default: runs/<sweep name> (local); tpu_vm "
                            "needs gs://...")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print exactly what would run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "local: runs at a time.")
_REPORT = flags.DEFINE_bool("report", False, "Collect results into report.csv "
                            "and report.md under the root instead of running.")
_STAGES = flags.DEFINE_list("tpu_stages", ["create", "install", "run"],
                            "tpu_vm: any of create, install, run, delete, in "
                            "that order.")
_DETACH = flags.DEFINE_bool("tpu_detach", False, "tpu_vm: start the runs in the "
                            "background on the workers (nohup) and return.")
_AOT_CHECK = flags.DEFINE_bool(
    "aot_check", True, "tpu_vm: first compile every run for the VM's topology "
    "on this machine (python -m cvlg_jax.aot; needs the libtpu wheel), and "
    "stop before creating anything if one does not fit.")
_AOT_EXAMPLES = flags.DEFINE_integer(
    "aot_num_examples", 0, "tpu_vm: training examples for that check when the "
    "data is not readable from here (sizes the bank); 0: open the source.")
tpu_vm.define_flags()
flags.mark_flag_as_required("sweep")

STAGES = ("create", "install", "run", "delete")


default_root = spec.default_root


def tpu_vm_plan(config: str, runs: list[spec.Run], stages, detach: bool,
                vm: tpu_vm.TpuVm, source: tpu_vm.CodeSource):
  """[(stage, argv)] for the TPU VM backend, in execution order."""
  unknown = set(stages) - set(STAGES)
  if unknown:
    raise spec.SweepError(f"--tpu_stages: unknown {sorted(unknown)}; allowed: "
                          f"{', '.join(STAGES)}")
  if detach and "delete" in stages:
    raise spec.SweepError("--tpu_detach returns while the runs are still going, so "
                          "a delete stage would kill them; delete the VM later "
                          "with: python -m launch.tpu_vm delete --tpu_name=...")
  commands = [tpu_vm.train_command(spec.trainer_flags(config, r.workdir,
                                                      r.overrides),
                                   source.remote_dir)
              for r in runs]
  plan = []
  if "create" in stages:
    plan.append(("create", vm.create()))
  if "install" in stages:
    plan += [("install", c) for c in tpu_vm.install_commands(vm, source)]
  if "run" in stages:
    if detach:
      plan.append(("run", vm.ssh(tpu_vm.detached(commands))))
    else:
      plan += [("run", vm.ssh(c)) for c in commands]
  if "delete" in stages:
    plan.append(("delete", vm.delete()))
  return plan


def run_tpu_vm(plan, dry_run: bool) -> int:
  """A failed create/install skips the runs; a failed run does not stop the
  next; ``delete`` happens whenever asked for (an idle TPU costs money)."""
  setup_rc, failed_runs = 0, 0
  for stage, cmd in plan:
    if setup_rc and stage != "delete":
      continue
    rc = tpu_vm.execute([cmd], dry_run)
    if rc and stage in ("create", "install"):
      setup_rc = rc
    elif rc:
      failed_runs += 1
  return setup_rc or (1 if failed_runs else 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _main()
  except (spec.SweepError, ValueError) as e:  # a mistake in the sweep or flags
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _main():
  sweep = spec.load_sweep(_SWEEP.value)
  backend = _BACKEND.value
  root = _ROOT.value or default_root(_SWEEP.value)
  if "://" not in root:
    root = os.path.abspath(root)
  validate = None
  if backend == "local" and not _REPORT.value:
    from cvlg_jax.config import validate
  runs = spec.expand(sweep, root, validate)
  print(f"# sweep {_SWEEP.value}: {len(runs)} runs of {sweep.config} under {root}",
        flush=True)

  if _REPORT.value:
    csv_path, md_path, markdown = report.write(root, runs)
    print(markdown)
    print(f"wrote {csv_path} and {md_path}")
    if sweep.report is not None:
      for path in sweep.report(report.collect(runs), root):
        print(f"wrote {path}")
    return

  if backend == "local":
    failed = local.launch(sweep.config, runs, parallel=_PARALLEL.value,
                          dry_run=_DRY_RUN.value)
    if failed:
      print(f"{len(failed)} run(s) failed: " + ", ".join(failed), file=sys.stderr)
      sys.exit(1)
    return

  tpu_vm.check_gcs(root)
  if _AOT_CHECK.value:
    failed = fit_check.check_runs(sweep.config, runs, flags.FLAGS.accelerator_type,
                                  num_examples=_AOT_EXAMPLES.value)
    if failed:
      print(f"{len(failed)} run(s) would not run on {flags.FLAGS.accelerator_type}; "
            "nothing was created (--noaot_check skips this check):\n  "
            + "\n  ".join(failed), file=sys.stderr)
      sys.exit(6)
  plan = tpu_vm_plan(sweep.config, runs, _STAGES.value, _DETACH.value,
                     tpu_vm.vm_from_flags(), tpu_vm.source_from_flags())
  sys.exit(run_tpu_vm(plan, _DRY_RUN.value))


if __name__ == "__main__":
  app.run(main)
