"""The TPU VM backend: dry runs print every gcloud command, values stay one
literal token through the remote shell, the plan takes its settings as
arguments, and the VM is always deleted."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from launch import spec, tpu_vm
from launch.spec import Sweep


REPO = spec.REPO


HOSTILE = "a; rm -rf /"


def _sweep_file(tmp_path, config, runs):
  path = tmp_path / "my_sweep.py"
  path.write_text("from launch.spec import Sweep\n"
                  f"def get_sweep():\n  return Sweep({config!r}, {runs!r})\n")
  return str(path)


def _no_gcloud_env(tmp_path):
  """PATH whose `gcloud` only fails: a dry run must never call the real one."""
  bin_dir = tmp_path / "fake_bin"
  bin_dir.mkdir(exist_ok=True)
  fake = bin_dir / "gcloud"
  fake.write_text("#!/bin/sh\necho 'gcloud was called' >&2\nexit 99\n")
  fake.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _run_cli(tmp_path, module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env=_no_gcloud_env(tmp_path), capture_output=True,
                        text=True, timeout=120)


def _cli(tmp_path, *args):
  out = _run_cli(tmp_path, "launch.sweep", *args)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def _shell_tokens(script: str) -> list[str]:
  lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def _has(tokens, seq) -> bool:
  return any(tokens[i:i + len(seq)] == seq for i in range(len(tokens)))


def test_tpu_vm_dry_run_prints_every_gcloud_command(tmp_path):
  path = _sweep_file(tmp_path, "configs/demo.py",
                     [{"loss.name": "clip"}, {"loss.name": "psd"}])
  out = _cli(tmp_path, f"--sweep={path}", "--backend=tpu_vm", "--noaot_check", "--root=gs://b/sw",
             "--tpu_name=my-tpu", "--zone=europe-west4-a", "--project=proj",
             "--accelerator_type=v4-32", "--runtime_version=tpu-ubuntu2204-base",
             "--repo_url=https://example.com/cvlg_jax.git", "--git_ref=v1",
             "--tpu_stages=create,install,run,delete", "--spot", "--dry_run")
  cmds = [shlex.split(l) for l in out.splitlines() if not l.startswith("#")]
  common = ["--zone=europe-west4-a", "--project=proj"]
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert cmds[0] == base + ["create", "my-tpu", *common,
                            "--accelerator-type=v4-32",
                            "--version=tpu-ubuntu2204-base", "--spot"]
  assert cmds[1][4:9] == ["ssh", "my-tpu", *common, "--worker=all"]
  install = _shell_tokens(cmds[1][9].removeprefix("--command="))
  assert install[:3] == ["set", "-e", ";"]
  assert _has(install, ["git", "clone", "-q", "https://example.com/cvlg_jax.git",
                        "cvlg_jax", ";", "git", "-C", "cvlg_jax", "checkout",
                        "-q", "v1", ";"])
  assert _has(install, ["-r", "cvlg_jax/requirements.txt", "jax[tpu]", ";"])
  for cmd, loss in zip(cmds[2:4], ("clip", "psd")):
    assert cmd[4:9] == ["ssh", "my-tpu", *common, "--worker=all"]
    remote = shlex.split(cmd[9].removeprefix("--command="))
    assert remote == ["cd", "cvlg_jax", "&&", "env", "CVLG_DISTRIBUTED=1",
                      "TF_CPP_MIN_LOG_LEVEL=3", "../cvlg_venv/bin/python", "-m",
                      "cvlg_jax.main", "--config=configs/demo.py",
                      f"--workdir=gs://b/sw/loss.name={loss}",
                      f"--config.loss.name={loss}"]
  assert cmds[4] == base + ["delete", "my-tpu", *common, "--quiet"]
  assert len(cmds) == 5


def test_tpu_vm_requires_a_gcs_root(tmp_path):
  path = _sweep_file(tmp_path, "configs/demo.py", [{}])
  out = _run_cli(tmp_path, "launch.sweep", f"--sweep={path}", "--backend=tpu_vm", "--noaot_check",
                 f"--root={tmp_path}", "--dry_run")
  assert out.returncode != 0 and "must be on GCS" in out.stderr


def _remote_trainer_args(remote: str) -> list[str]:
  tokens = shlex.split(remote)
  return tokens[tokens.index("cvlg_jax.main") + 1:]


def test_hostile_values_stay_one_literal_token(tmp_path):
  runs = spec.expand(Sweep("configs/demo.py", [
      {"data.tokenizer_path": HOSTILE, "data.tfds_name": "$(touch x) `id` 'q\""}]),
      "gs://b/sw")
  flags_ = spec.trainer_flags("configs/demo.py", runs[0].workdir, runs[0].overrides)
  vm = tpu_vm.TpuVm("t", "z", "v4-8", "rt")
  cmd = vm.ssh(tpu_vm.train_command(flags_))
  args = _remote_trainer_args(cmd[-1].removeprefix("--command="))
  assert f"--config.data.tokenizer_path={HOSTILE}" in args
  assert "--config.data.tfds_name=$(touch x) `id` 'q\"" in args
  assert args == flags_
  # Detached: the run commands are quoted once more inside `bash -c`.
  outer = shlex.split(vm.ssh(tpu_vm.detached([tpu_vm.train_command(flags_)]))[-1]
                      .removeprefix("--command="))
  assert outer[:4] == ["cd", "&&", "nohup", "bash"]
  assert _remote_trainer_args(outer[outer.index("-c") + 1]) == flags_
  with pytest.raises(ValueError, match="plain directory name"):
    tpu_vm.train_command(flags_, remote_dir="x; rm -rf ~")


def test_remote_command_survives_a_real_shell(tmp_path):
  """Runs the generated remote command in bash with a stub python that
  records its argv: values arrive intact and nothing in them executes."""
  home = tmp_path / "home"
  (home / "cvlg_jax").mkdir(parents=True)
  (home / "cvlg_venv" / "bin").mkdir(parents=True)
  stub = home / "cvlg_venv" / "bin" / "python"
  stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  "json.dump(sys.argv[1:], open('argv.json', 'w'))\n")
  stub.chmod(0o755)
  evil = "a; touch PWNED1 $(touch PWNED2) `touch PWNED3`"
  flags_ = ["--config=configs/demo.py", f"--config.data.tokenizer_path={evil}"]
  remote = tpu_vm.train_command(flags_)
  out = subprocess.run(["bash", "-c", remote], cwd=home, capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  argv = json.load(open(home / "cvlg_jax" / "argv.json"))
  assert argv == ["-m", "cvlg_jax.main", *flags_]
  assert not list(home.rglob("PWNED*"))


def test_tpu_vm_dry_run_copies_head_without_repo_url_and_detaches(tmp_path):
  path = _sweep_file(tmp_path, "configs/demo.py:noise=0.2",
                     [{"train.seed": 0}, {"train.seed": 1}])
  out = _cli(tmp_path, f"--sweep={path}", "--backend=tpu_vm", "--noaot_check", "--root=gs://b/sw",
             "--zone=", "--tpu_stages=install,run", "--tpu_detach", "--dry_run")
  cmds = [shlex.split(l) for l in out.splitlines() if not l.startswith("#")]
  assert cmds[0] == ["git", "-C", REPO, "archive", "--format=tar.gz", "-o",
                     "/tmp/cvlg_jax.tar.gz", "HEAD"]
  assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp",
                     "/tmp/cvlg_jax.tar.gz", "cvlg:cvlg_jax.tar.gz", "--worker=all"]
  assert _has(_shell_tokens(cmds[2][-1]), ["tar", "-xzf", "cvlg_jax.tar.gz", "-C",
                                           "cvlg_jax", ";"])
  assert len(cmds) == 4  # both runs in one detached ssh
  outer = shlex.split(cmds[3][-1].removeprefix("--command="))
  assert outer[-6:] == [">", "cvlg_launch.log", "2>&1", "<", "/dev/null", "&"]
  inner = _shell_tokens(outer[outer.index("-c") + 1])
  assert inner.count("cvlg_jax.main") == 2
  assert "--workdir=gs://b/sw/train.seed=1" in inner
  assert "--config=configs/demo.py:noise=0.2" in inner
  bad = _run_cli(tmp_path, "launch.sweep", f"--sweep={path}", "--backend=tpu_vm", "--noaot_check",
                 "--root=gs://b/sw", "--tpu_stages=run,delete", "--tpu_detach",
                 "--dry_run")
  assert bad.returncode != 0 and "would kill them" in bad.stderr


def test_tpu_vm_cli_dry_run(tmp_path):
  def cli(action, *args):
    out = _run_cli(tmp_path, "launch.tpu_vm", action, "--dry_run", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    return [shlex.split(l) for l in out.stdout.splitlines()]

  (cmd,) = cli("run", "--tpu_name=t", "--workdir=gs://b/r", "--",
               "--config=configs/demo.py", f"--config.data.tokenizer_path={HOSTILE}")
  assert _remote_trainer_args(cmd[-1].removeprefix("--command=")) == [
      "--config=configs/demo.py", f"--config.data.tokenizer_path={HOSTILE}",
      "--workdir=gs://b/r"]
  (cmd,) = cli("tensorboard", "--tpu_name=t", "--logdir=gs://b")
  assert "--worker=0" in cmd and "--ssh-flag=-L 6006:localhost:6006" in cmd
  assert cli("delete", "--tpu_name=t", "--zone=z") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t", "--zone=z", "--quiet"]]


def test_tpu_vm_backend_executes_in_order_and_always_deletes(tmp_path):
  """A recording `gcloud` that fails the first run: the second run still
  happens and the VM is deleted; the sweep exits non-zero."""
  record = tmp_path / "calls.jsonl"
  bin_dir = tmp_path / "rec_bin"
  bin_dir.mkdir()
  fake = bin_dir / "gcloud"
  fake.write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
      "sys.exit(3 if 'loss.name=clip' in sys.argv[-1] else 0)\n")
  fake.chmod(0o755)
  path = _sweep_file(tmp_path, "configs/demo.py",
                     [{"loss.name": "clip"}, {"loss.name": "psd"}])
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  out = subprocess.run(
      [sys.executable, "-m", "launch.sweep", f"--sweep={path}", "--backend=tpu_vm", "--noaot_check",
       "--root=gs://b/sw", "--repo_url=u", "--tpu_stages=create,install,run,delete"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  calls = [json.loads(l) for l in open(record)]
  assert [c[3] for c in calls] == ["create", "ssh", "ssh", "ssh", "delete"]
  assert "loss.name=clip" in calls[2][-1] and "loss.name=psd" in calls[3][-1]


def test_tpu_vm_plan_takes_its_settings_as_arguments():
  """No absl flags needed: the plan is a function of the VM and code source."""
  vm = tpu_vm.TpuVm("t", "z", "v4-8", "rt")
  src = tpu_vm.CodeSource(repo_url="https://example.invalid/x.git", git_ref="v1",
                          remote_dir="code")
  (install,) = tpu_vm.plan("install", [], vm, src)
  assert "git clone" in install[-1] and "v1" in install[-1]
  archived = tpu_vm.plan("install", [], vm, tpu_vm.CodeSource())
  assert len(archived) == 3 and "git" in archived[0][0]  # archive, scp, ssh
  (run,) = tpu_vm.plan("run", ["--config=configs/demo.py"], vm, src,
                       workdir="gs://b/r", detach=True)
  assert "--workdir=gs://b/r" in run[-1] and "nohup" in run[-1]
  with pytest.raises(ValueError, match="--config"):
    tpu_vm.plan("run", [], vm, src, workdir="gs://b/r")
