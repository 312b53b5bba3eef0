"""Sweep expansion, naming, dry runs of both backends, quoting, the report."""

import csv
import json
import os
import shlex
import subprocess
import sys

import pytest

from launch import local, report, spec, tpu_vm
from launch.spec import Sweep, SweepError, grid, product, zip_

REPO = spec.REPO
HOSTILE = "a; rm -rf /"


def test_grid_is_the_product_last_axis_fastest():
  runs = grid(**{"loss.name": ["clip", "psd"], "train.seed": [0, 1, 2]})
  assert runs == [{"loss.name": l, "train.seed": s}
                  for l in ("clip", "psd") for s in (0, 1, 2)]
  assert grid({"a.b": [1]}, **{"c.d": [2, 3]}) == [{"a.b": 1, "c.d": 2},
                                                   {"a.b": 1, "c.d": 3}]


def test_zip_advances_axes_together_and_checks_lengths():
  assert zip_(**{"optim.learning_rate": [1e-3, 5e-4],
                 "optim.warmup_steps": [10, 20]}) == [
      {"optim.learning_rate": 1e-3, "optim.warmup_steps": 10},
      {"optim.learning_rate": 5e-4, "optim.warmup_steps": 20}]
  with pytest.raises(SweepError, match="equal lengths"):
    zip_(**{"a.b": [1, 2], "c.d": [1]})
  with pytest.raises(SweepError, match="list of values"):
    grid(**{"a.b": "clip"})


def test_product_and_concatenation():
  runs = product(zip_(**{"a.x": [1, 2], "a.y": [3, 4]}), grid(**{"b": [0, 1]}))
  assert runs == [{"a.x": 1, "a.y": 3, "b": 0}, {"a.x": 1, "a.y": 3, "b": 1},
                  {"a.x": 2, "a.y": 4, "b": 0}, {"a.x": 2, "a.y": 4, "b": 1}]
  with pytest.raises(SweepError, match="more than one factor"):
    product(grid(**{"b": [0]}), grid(**{"b": [1]}))
  assert len(grid(**{"b": [0, 1]}) + [{"b": 2}]) == 3


def test_run_names_are_readable_stable_and_safe():
  assert spec.run_name({"loss.name": "psd", "data.caption_noise": 0.2,
                        "train.seed": 1}) == \
      "loss.name=psd,data.caption_noise=0.2,train.seed=1"
  assert spec.run_name({}) == "base"
  assert spec.run_name({"x.flag": True}) == "x.flag=true"
  hostile = spec.run_name({"data.tokenizer_path": HOSTILE})
  other = spec.run_name({"data.tokenizer_path": "a_ rm -rf _"})
  for name in (hostile, other):
    assert "/" not in name and " " not in name and ";" not in name
  assert hostile != other  # sanitising alone would have merged them
  assert hostile == spec.run_name({"data.tokenizer_path": HOSTILE})  # stable
  long = spec.run_name({"data.tokenizer_path": "x" * 500})
  assert len(long) <= spec.MAX_NAME_LEN
  assert long != spec.run_name({"data.tokenizer_path": "x" * 501})
  assert not spec.run_name({"..": 1}).startswith(".")


def test_duplicates_rejected():
  with pytest.raises(SweepError, match=r"duplicate runs: #0 and #2"):
    spec.check_unique([{"a": 1, "b": 2}, {"a": 2}, {"b": 2, "a": 1}])


def test_expand_checks_keys_and_types_against_the_config(tmp_path):
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "train.seed": [0, 1], "train.steps": [7]})), str(tmp_path))
  assert [r.name for r in runs] == ["train.seed=0,train.steps=7",
                                    "train.seed=1,train.steps=7"]
  assert runs[1].workdir == str(tmp_path / "train.seed=1,train.steps=7")
  assert runs[0].steps == 7
  assert spec.expand(Sweep("configs/demo.py:tiny", [{}]), "r")[0].steps == 20
  with pytest.raises(SweepError, match="no such key"):
    spec.expand(Sweep("configs/demo.py", [{"train.stepz": 1}]), "r")
  with pytest.raises(SweepError, match="no group 'trian'"):
    spec.expand(Sweep("configs/demo.py", [{"trian.steps": 1}]), "r")
  with pytest.raises(SweepError, match="train.steps='many'"):
    spec.expand(Sweep("configs/demo.py", [{"train.steps": "many"}]), "r")
  with pytest.raises(SweepError, match="not found"):
    spec.expand(Sweep("configs/nope.py", [{}]), "r")
  from cvlg_jax.config import validate
  with pytest.raises(SweepError, match=r"run #1 .*caption_noise"):
    spec.expand(Sweep("configs/demo.py", [{"data.caption_noise": 0.5},
                                          {"data.caption_noise": 1.5}]), "r",
                validate)


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


def test_local_dry_run_prints_runnable_commands_and_skips_finished(tmp_path):
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "train.seed": [0, 1]})), str(tmp_path / "root"))
  finished = runs[0]  # fake a finished run: last step logged + checkpointed
  os.makedirs(os.path.join(finished.workdir, "checkpoints", "20"))
  with open(os.path.join(finished.workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 20, "loss": 1.0}) + "\n")
  import io
  buf = io.StringIO()
  assert local.launch("configs/demo.py:tiny", runs, dry_run=True, out=buf) == []
  lines = buf.getvalue().splitlines()
  assert lines[0] == f"# finished, skipping: {finished.name}"
  assert len(lines) == 2
  argv = shlex.split(lines[1])
  log = os.path.join(runs[1].workdir, "train.log")
  assert argv[:5] == ["mkdir", "-p", runs[1].workdir, "&&", "cd"]
  assert argv[5:7] == [REPO, "&&"]
  assert argv[7:] == [sys.executable, "-m", "cvlg_jax.main",
                      "--config=configs/demo.py:tiny",
                      f"--workdir={runs[1].workdir}", "--config.train.seed=1",
                      ">>", log, "2>&1"]
  assert not os.path.exists(runs[1].workdir)  # a dry run creates nothing


def _shell_tokens(script: str) -> list[str]:
  lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def _has(tokens, seq) -> bool:
  return any(tokens[i:i + len(seq)] == seq for i in range(len(tokens)))


def test_tpu_vm_dry_run_prints_every_gcloud_command(tmp_path):
  path = _sweep_file(tmp_path, "configs/demo.py",
                     [{"loss.name": "clip"}, {"loss.name": "psd"}])
  out = _cli(tmp_path, f"--sweep={path}", "--backend=tpu_vm", "--root=gs://b/sw",
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
  out = _run_cli(tmp_path, "launch.sweep", f"--sweep={path}", "--backend=tpu_vm",
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


def _fake_run(workdir, rows, config=None, eval_=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  if eval_ is not None:
    os.makedirs(os.path.join(workdir, "eval"))
    for step, res in eval_.items():
      with open(os.path.join(workdir, "eval", f"{step}.json"), "w") as f:
        json.dump(res, f)


def test_report_pools_seeds_into_mean_and_std(tmp_path):
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "loss.name": ["clip", "psd"], "train.seed": [0, 1]})), str(tmp_path))
  zs = {("clip", 0): 0.2, ("clip", 1): 0.4, ("psd", 0): 0.5, ("psd", 1): 0.6}
  for run in runs:
    key = (run.overrides["loss.name"], run.overrides["train.seed"])
    if key == ("psd", 1):
      continue  # never started
    _fake_run(run.workdir, [
        {"step": 10, "loss": 3.0, "synthetic/zeroshot_top1": 0.0},
        {"step": 20, "loss": 2.0 + key[1], "synthetic/zeroshot_top1": zs[key]}],
        eval_={10: {"step": 10, "results": {"imagenet": {"top1": 0.1}}},
               20: {"step": 20, "results": {"imagenet": {"top1": zs[key]}},
                    "skipped": {"cifar10": "missing"}}})
  csv_path, md_path, markdown = report.write(str(tmp_path), runs)
  lines = list(csv.reader(open(csv_path)))
  assert lines[0] == ["run", "loss.name", "train.seed", "status", "step",
                      "eval/imagenet/top1", "loss", "synthetic/zeroshot_top1"]
  assert lines[1] == [runs[0].name, "clip", "0", "finished", "20", "0.2", "2.0",
                      "0.2"]
  assert lines[4] == [runs[3].name, "psd", "1", "missing", "", "", "", ""]
  assert open(md_path).read() == markdown
  table = markdown.splitlines()
  assert table[0] == ("| loss.name | seeds | loss | eval/imagenet/top1 | "
                      "synthetic/zeroshot_top1 |")
  # clip: mean(0.2, 0.4) = 0.3, sample std = 0.1414; losses 2 and 3.
  assert table[2] == ("| clip | 2/2 | 2.5000 ± 0.7071 | 0.3000 ± 0.1414 | "
                      "0.3000 ± 0.1414 |")
  assert table[3] == "| psd | 1/2 | 2.0000 | 0.5000 | 0.5000 |"
  assert "sample std" in markdown


def test_tpu_vm_dry_run_copies_head_without_repo_url_and_detaches(tmp_path):
  path = _sweep_file(tmp_path, "configs/demo.py:noise=0.2",
                     [{"train.seed": 0}, {"train.seed": 1}])
  out = _cli(tmp_path, f"--sweep={path}", "--backend=tpu_vm", "--root=gs://b/sw",
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
  bad = _run_cli(tmp_path, "launch.sweep", f"--sweep={path}", "--backend=tpu_vm",
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
      [sys.executable, "-m", "launch.sweep", f"--sweep={path}", "--backend=tpu_vm",
       "--root=gs://b/sw", "--repo_url=u", "--tpu_stages=create,install,run,delete"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  calls = [json.loads(l) for l in open(record)]
  assert [c[3] for c in calls] == ["create", "ssh", "ssh", "ssh", "delete"]
  assert "loss.name=clip" in calls[2][-1] and "loss.name=psd" in calls[3][-1]


def test_local_backend_runs_k_at_a_time_and_reports_failures(tmp_path, monkeypatch):
  """Stand-in trainers: run #1 fails, the others write a finished run. All
  three start (the failure stops nothing), at most 2 at once, logs kept."""
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "train.seed": [0, 1, 2]})), str(tmp_path))
  script = (
      "import json, os, sys, time\n"
      "w = sys.argv[1]\n"
      "open(os.path.join(os.path.dirname(w), 'starts'), 'a').write(f'{time.time()} +\\n')\n"
      "time.sleep(0.5)\n"
      "open(os.path.join(os.path.dirname(w), 'starts'), 'a').write(f'{time.time()} -\\n')\n"
      "if w.endswith('seed=1'):\n"
      "  print('boom'); sys.exit(3)\n"
      "os.makedirs(os.path.join(w, 'checkpoints', '20'))\n"
      "open(os.path.join(w, 'metrics.jsonl'), 'w').write(json.dumps({'step': 20}) + '\\n')\n")
  monkeypatch.setattr(local, "command", lambda config, run: [
      sys.executable, "-c", script, run.workdir])
  failed = local.launch("configs/demo.py:tiny", runs, parallel=2, progress=False)
  assert failed == [runs[1].name]
  assert "boom" in open(os.path.join(runs[1].workdir, "train.log")).read()
  assert [local.is_finished(r) for r in runs] == [True, False, True]
  events = sorted(l.split() for l in open(tmp_path / "starts"))
  running = peak = 0
  for _, kind in events:
    running += 1 if kind == "+" else -1
    peak = max(peak, running)
  assert peak == 2 and len(events) == 6


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
