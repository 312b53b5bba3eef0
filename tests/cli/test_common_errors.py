"""Every mistake a new user makes is one line naming the problem and the fix,
with the documented exit code, and nothing moved or deleted. ``CASES`` is
also the table in docs/robustness.md ("Errors", written by
scripts/error_table.py; test_the_docs_table_is_these_cases keeps it true)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from main_runner import REPO, TINY_NOEVAL_CONFIG

# (name, what the user runs: cvlg_jax.main flags, the start of the one line,
#  exit code). WORKDIR / FILE / TINY are filled in per test.
CASES = [
    ("unknown override", ["--config=configs/demo.py:tiny",
                          "--config.train.bogus=1", "--workdir=WORKDIR"],
     "Invalid config: --config override of an unknown key bogus", 2),
    ("bad config-file argument", ["--config=configs/demo.py:bogus",
                                  "--workdir=WORKDIR"],
     "Invalid command line: ValueError: configs/demo.py: unknown arg 'bogus'", 2),
    ("missing config file", ["--config=configs/nope.py", "--workdir=WORKDIR"],
     "Invalid config: [Errno 2] No such file or directory: 'configs/nope.py'", 2),
    ("value of the wrong type", ["--config=configs/demo.py:tiny",
                                 "--config.train.steps=abc", "--workdir=WORKDIR"],
     "Invalid command line: flag --config.train.steps=abc: invalid literal", 2),
    ("missing folder: data set", [
        "--config=configs/robustness.py:dataset=folder:/no/such/dir,tiny",
        "--workdir=WORKDIR"],
     "Invalid config: config.data.tfds_name / tfds_split: training set "
     "'folder:/no/such/dir', split 'train': /no/such/dir does not exist", 2),
    ("workdir is a file", ["--config=configs/demo.py:tiny", "--workdir=FILE"],
     "--workdir=FILE is a file, not a directory", 2),
    ("workdir cannot be written", ["--config=configs/demo.py:tiny",
                                   "--workdir=/proc/cvlg_cannot_write"],
     "--workdir=/proc/cvlg_cannot_write cannot be written", 2),
    ("resume with another model", ["--config=TINY", "--workdir=TRAINED",
                                   "--config.model.name=demo"],
     "Cannot resume: TRAINED holds a run whose model.name ('tiny' -> 'demo')", 4),
]


def _run(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.run([sys.executable, "-m", "cvlg_jax.main", *flags], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 5-step run of the tiny config to resume."""
  root = tmp_path_factory.mktemp("errors")
  config = root / "tiny.py"
  config.write_text(TINY_NOEVAL_CONFIG)
  workdir = root / "run"
  out = _run(f"--config={config}", f"--workdir={workdir}", "--config.train.steps=5")
  assert out.returncode == 0, out.stderr[-3000:]
  return str(config), str(workdir)


def _fill(text, paths):
  for key, value in paths.items():
    text = text.replace(key, value)
  return text


@pytest.mark.parametrize("name,flags,message,code", CASES, ids=[c[0] for c in CASES])
def test_one_line_and_the_documented_exit_code(name, flags, message, code, tmp_path,
                                               request):
  paths = {"WORKDIR": str(tmp_path / "run"), "FILE": str(tmp_path / "a_file")}
  (tmp_path / "a_file").write_text("not a directory")
  if "TRAINED" in " ".join(flags):
    paths["TINY"], paths["TRAINED"] = request.getfixturevalue("trained")
  before = sorted(os.listdir(tmp_path))
  out = _run(*(_fill(f, paths) for f in flags))
  lines = [l for l in out.stderr.splitlines() if l.startswith(_fill(message, paths))]
  assert out.returncode == code, out.stderr[-3000:]
  assert len(lines) == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == before  # nothing created or moved
  if "TRAINED" in paths:
    assert sorted(os.listdir(os.path.join(paths["TRAINED"], "checkpoints"))) == ["5"]


def test_resume_with_a_changed_step_count_warns_and_records_it(trained, tmp_path):
  config, workdir = trained[0], str(tmp_path / "run")
  shutil.copytree(trained[1], workdir)
  out = _run(f"--config={config}", f"--workdir={workdir}", "--config.train.steps=7")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Resuming with a changed config (recorded in run_info.json): " \
         "train.steps 5 -> 7" in out.stderr
  info = json.load(open(os.path.join(workdir, "run_info.json")))
  assert info["changed_on_resume"] == [
      {"step": 5, "changes": {"train.steps": [5, 7]}}]
  # Resolved again at the resume: the demo's rule by length ramps a run of
  # under 10 epochs over 12.5 epochs of its data, whatever train.steps is.
  resolved = info["resolved"]
  assert resolved["psd_ramp_steps"] == round(12.5 * resolved["steps_per_epoch"])


def test_out_of_device_memory_is_one_line_with_the_knobs(tmp_path):
  """XLA's RESOURCE_EXHAUSTED (48 lines, after minutes) becomes one line
  (the step is replaced by one that raises it, in a subprocess)."""
  code = (
      "import sys, jax\n"
      "from absl import app\n"
      "from cvlg_jax.cli import common, train\n"
      "from cvlg_jax.run import loop\n"
      "def out_of_memory(*args, **kwargs):\n"
      "  raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory "
      "while trying to allocate 1.0T')\n"
      "loop.run = out_of_memory\n"
      f"sys.argv = ['main', '--config=configs/demo.py:tiny', '--workdir={tmp_path}/w']\n"
      "app.run(train.main, flags_parser=common.parse_flags)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 6, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith("Out of device memory")]
  assert len(lines) == 1 and "train.batch_size=32" in lines[0], out.stderr[-2000:]
  assert "model.remat=True" in lines[0] and "cvlg_jax.aot" in lines[0]
  assert "Traceback" not in out.stderr


def test_print_config_shows_the_resolved_config_and_exits(tmp_path):
  out = _run("--config=configs/demo.py:tiny", "--config.train.steps=77",
             "--print_config")
  assert out.returncode == 0, out.stderr[-2000:]
  # The demo's PSD is the default rule by length (configs/common.DEFAULT_PSD).
  assert "steps: 77" in out.stdout and "ramp_epochs: 12.5" in out.stdout
  assert "ramp_epochs_for_runs_under: 10.0" in out.stdout


def test_the_docs_table_is_these_cases():
  out = subprocess.run([sys.executable, "scripts/error_table.py", "--check"],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
