"""Cloud TPU VM workflow: create, install, run, watch, delete — as argv lists.

Every command is an argument list for ``subprocess`` (no local shell). The
only shell involved is the remote one that ``gcloud ... ssh --command`` starts
on each worker, and every value placed in that command string goes through
``shlex.quote``, so a config value like ``a; rm -rf /`` arrives as one literal
argument. Used by ``launch.sweep --backend=tpu_vm`` and on its own::

    python -m launch.tpu_vm create  --tpu_name=cvlg --zone=us-central2-b
    python -m launch.tpu_vm install --tpu_name=cvlg --repo_url=https://...
    python -m launch.tpu_vm run --tpu_name=cvlg --workdir=gs://BUCKET/run1 -- \\
        --config=configs/demo.py --config.train.steps=2000
    python -m launch.tpu_vm tensorboard --tpu_name=cvlg --logdir=gs://BUCKET
    python -m launch.tpu_vm delete  --tpu_name=cvlg

Add ``--dry_run`` to print the commands instead. Multi-host slices: the same
command runs on every worker (``--worker=all``) with ``CVLG_DISTRIBUTED=1``,
which makes ``cvlg_jax.main`` call ``jax.distributed.initialize()``.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys

from absl import flags

from launch import spec

VENV = "cvlg_venv"      # on each worker, under $HOME
ARCHIVE = "cvlg_jax.tar.gz"
ACTIONS = ("create", "install", "run", "tensorboard", "describe", "delete")
_SAFE_DIR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class TpuVm:
  name: str
  zone: str
  accelerator_type: str
  runtime_version: str
  project: str = ""
  spot: bool = False

  def gcloud(self, verb: str, *args: str, positional=None) -> list[str]:
    """``gcloud compute tpus tpu-vm VERB <positional or name> --zone ...``."""
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb,
           *(positional if positional is not None else [self.name])]
    if self.zone:
      cmd.append(f"--zone={self.zone}")
    if self.project:
      cmd.append(f"--project={self.project}")
    return cmd + list(args)

  def create(self) -> list[str]:
    return self.gcloud("create", f"--accelerator-type={self.accelerator_type}",
                       f"--version={self.runtime_version}",
                       *(["--spot"] if self.spot else []))

  def delete(self) -> list[str]:
    return self.gcloud("delete", "--quiet")

  def describe(self) -> list[str]:
    return self.gcloud("describe", "--format=value(state,health)")

  def ssh(self, remote_command: str, worker: str = "all", *ssh_flags) -> list[str]:
    return self.gcloud("ssh", f"--worker={worker}", f"--command={remote_command}",
                       *(f"--ssh-flag={f}" for f in ssh_flags))

  def scp(self, local: str, remote: str) -> list[str]:
    return self.gcloud("scp", "--worker=all",
                       positional=[local, f"{self.name}:{remote}"])


def _check_dir(remote_dir: str) -> str:
  if not _SAFE_DIR.fullmatch(remote_dir) or remote_dir in (".", ".."):
    raise ValueError(f"remote_dir must be a plain directory name, got "
                     f"{remote_dir!r}")
  return remote_dir


def archive_command(out: str = f"/tmp/{ARCHIVE}") -> list[str]:
  """Local: the committed tree (HEAD) as a tarball, for scp to the workers."""
  return ["git", "-C", spec.REPO, "archive", "--format=tar.gz", "-o", out, "HEAD"]


def install_script(repo_url: str = "", git_ref: str = "",
                   remote_dir: str = "cvlg_jax") -> str:
  """Remote shell script: fetch the code, make a Python 3.11 venv, install.

  Without ``repo_url`` the tarball from :func:`archive_command` (scp'd to
  ``~/cvlg_jax.tar.gz``) is unpacked instead of cloning. ``uv`` provides
  Python 3.11 where the runtime image ships an older one.
  """
  d = shlex.quote(_check_dir(remote_dir))
  # One statement each: under `set -e` a failure inside `a && b` would not stop.
  if repo_url:
    fetch = [f"git clone -q {shlex.quote(repo_url)} {d}"]
    if git_ref:
      fetch.append(f"git -C {d} checkout -q {shlex.quote(git_ref)}")
  else:
    fetch = [f"mkdir {d}", f"tar -xzf {ARCHIVE} -C {d}"]
  uv = "$HOME/.local/bin/uv"
  return "; ".join([
      "set -e", "cd", f"rm -rf {d}", *fetch,
      "python3 -m pip install -q --user uv 2>/dev/null || "
      "python3 -m pip install -q --user --break-system-packages uv",
      f"[ -x {VENV}/bin/python ] || {uv} venv -q --python 3.11 {VENV}",
      f"{uv} pip install -q --python {VENV}/bin/python -r {d}/requirements.txt "
      f"{shlex.quote('jax[tpu]')}",
      "echo \"installed on $(hostname)\""])


def train_command(trainer_flags: list[str], remote_dir: str = "cvlg_jax") -> str:
  """Remote shell command for one run; identical on every worker.

  Re-running it after a preemption resumes from the latest checkpoint in the
  (GCS) workdir; on a finished run it exits right after restoring.
  """
  return shlex.join(["cd", _check_dir(remote_dir)]) + " && " + shlex.join(
      ["env", "CVLG_DISTRIBUTED=1", "TF_CPP_MIN_LOG_LEVEL=3",
       f"../{VENV}/bin/python", "-m", "cvlg_jax.main", *trainer_flags])


def detached(commands: list[str], log: str = "cvlg_launch.log") -> str:
  """Runs the commands one after another in the background (survives ssh
  disconnects); output goes to ``~/<log>`` on each worker."""
  script = "; ".join(commands)
  return (f"cd && nohup bash -c {shlex.quote(script)} > {shlex.quote(log)} "
          "2>&1 < /dev/null &")


def tensorboard_command(logdir: str, port: int = 6006) -> str:
  return "cd && " + shlex.join([f"{VENV}/bin/tensorboard", f"--logdir={logdir}",
                                f"--port={port}", "--host=localhost"])


def check_gcs(workdir: str) -> None:
  if not workdir.startswith("gs://"):
    raise ValueError(f"TPU VM workdirs must be on GCS (gs://...), got "
                     f"{workdir!r}: the VM's disk goes away with the VM, and "
                     "pod workers do not share one")


# ------------------------------------------------------------------ flags ---

def define_flags() -> None:
  """TPU VM flags, shared by this CLI and ``launch.sweep``."""
  flags.DEFINE_string("tpu_name", "cvlg", "TPU VM name.")
  flags.DEFINE_string("zone", "us-central2-b", "Zone ('' = gcloud default).")
  flags.DEFINE_string("accelerator_type", "v4-8",
                      "e.g. v4-8, v4-32 (pod slice), v5litepod-8, v6e-8.")
  flags.DEFINE_string("runtime_version", "tpu-ubuntu2204-base",
                      "TPU VM image, e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite,"
                      " v2-alpha-tpuv6e.")
  flags.DEFINE_string("project", "", "GCP project ('' = gcloud default).")
  flags.DEFINE_bool("spot", False, "Create a Spot (preemptible) TPU VM.")
  flags.DEFINE_string("repo_url", "", "git URL to clone on the workers; empty: "
                      "copy the local committed HEAD with git archive + scp.")
  flags.DEFINE_string("git_ref", "", "Branch, tag or commit to check out.")
  flags.DEFINE_string("remote_dir", "cvlg_jax", "Checkout directory on workers.")


@dataclasses.dataclass(frozen=True)
class CodeSource:
  """Where the workers' checkout comes from and where it goes."""
  repo_url: str = ""          # empty: the local committed HEAD (git archive + scp)
  git_ref: str = ""
  remote_dir: str = "cvlg_jax"


def vm_from_flags() -> TpuVm:
  f = flags.FLAGS
  return TpuVm(f.tpu_name, f.zone, f.accelerator_type, f.runtime_version,
               f.project, f.spot)


def source_from_flags() -> CodeSource:
  f = flags.FLAGS
  return CodeSource(f.repo_url, f.git_ref, f.remote_dir)


def install_commands(vm: TpuVm, source: CodeSource) -> list[list[str]]:
  cmds = []
  if not source.repo_url:
    cmds += [archive_command(), vm.scp(f"/tmp/{ARCHIVE}", ARCHIVE)]
  cmds.append(vm.ssh(install_script(source.repo_url, source.git_ref,
                                    source.remote_dir)))
  return cmds


def execute(cmds: list[list[str]], dry_run: bool, out=sys.stdout) -> int:
  """Prints (dry run) or runs each command; stops at the first failure."""
  for cmd in cmds:
    print(("" if dry_run else "+ ") + shlex.join(cmd), file=out, flush=True)
    if not dry_run:
      rc = subprocess.run(cmd).returncode
      if rc:
        print(f"command failed with exit code {rc}", file=sys.stderr)
        return rc
  return 0


def main(argv):
  f = flags.FLAGS
  if len(argv) < 2 or argv[1] not in ACTIONS:
    raise SystemExit(f"usage: python -m launch.tpu_vm {{{'|'.join(ACTIONS)}}} "
                     "[flags] [-- trainer flags]")
  try:
    cmds = plan(argv[1], argv[2:], vm_from_flags(), source_from_flags(),
                workdir=f.workdir, logdir=f.logdir, detach=f.detach)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(execute(cmds, f.dry_run))


def plan(action: str, rest: list[str], vm: TpuVm, source: CodeSource, *,
         workdir: str = "", logdir: str = "", detach: bool = False
         ) -> list[list[str]]:
  """The commands of one CLI action (``rest``: trainer flags for ``run``;
  ``workdir``/``detach`` for run, ``logdir`` for tensorboard)."""
  if action == "create":
    cmds = [vm.create()]
  elif action == "install":
    cmds = install_commands(vm, source)
  elif action == "run":
    check_gcs(workdir)
    if not any(a.startswith("--config=") for a in rest):
      raise ValueError("run: pass trainer flags after '--', at least "
                       "--config=configs/<file>.py")
    command = train_command([*rest, f"--workdir={workdir}"], source.remote_dir)
    cmds = [vm.ssh(detached([command]) if detach else command)]
  elif action == "tensorboard":
    check_gcs(logdir)
    cmds = [vm.ssh(tensorboard_command(logdir), "0",
                   "-L 6006:localhost:6006")]
  elif action == "describe":
    cmds = [vm.describe()]
  else:
    cmds = [vm.delete()]
  return cmds


if __name__ == "__main__":
  from absl import app
  define_flags()
  flags.DEFINE_string("workdir", "", "run: gs:// workdir of the run.")
  flags.DEFINE_string("logdir", "", "tensorboard: gs:// directory to watch.")
  flags.DEFINE_bool("detach", False, "run: start in the background (nohup) "
                    "and return; output in ~/cvlg_launch.log on each worker.")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running.")
  app.run(main)
