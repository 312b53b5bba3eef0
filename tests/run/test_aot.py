"""Ahead-of-time compilation (``python -m cvlg_jax.aot``): for 8 CPU devices
always, and for TPU slices (v5e:2x2, v4:2x2x1, Colab's v2-8) where libtpu is
installed (CI installs it into its own folder: scripts/test.sh). The
embedding bank's step holds no copy of the bank: its temporaries exceed the
self teacher's by at most 5 % of the bank's share, on TPU as on CPU."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from main_runner import REPO

BOUND = 0.05


def _libtpu_dir():
  """The folder holding libtpu (CVLG_LIBTPU_DIR, or an installed wheel)."""
  folder = os.environ.get("CVLG_LIBTPU_DIR")
  if folder and os.path.isdir(os.path.join(folder, "libtpu")):
    return folder
  spec = importlib.util.find_spec("libtpu")
  return None if spec is None else os.path.dirname(os.path.dirname(spec.origin))


def _matrix(tmp_path_factory, backend):
  out = tmp_path_factory.mktemp(f"aot_{backend}") / "matrix.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  if backend == "tpu":
    env.update(PYTHONPATH=os.pathsep.join([_libtpu_dir(), env["PYTHONPATH"]]),
               ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_SKIP_MDS_QUERY="1",
               TPU_WORKER_HOSTNAMES="localhost",
               TPU_ACCELERATOR_TYPE="v5litepod-4")  # quiets libtpu's host probe
  proc = subprocess.run([sys.executable, "tests/aot_matrix.py", str(out),
                         f"--backend={backend}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return {(r["topology"], r["case"]): r for r in json.load(open(out))["records"]}


@pytest.fixture(scope="module")
def cpu_matrix(tmp_path_factory):
  return _matrix(tmp_path_factory, "cpu")


@pytest.fixture(scope="module")
def tpu_matrix(tmp_path_factory):
  if _libtpu_dir() is None:
    pytest.skip("libtpu is not installed (scripts/test.sh installs it for CI)")
  return _matrix(tmp_path_factory, "tpu")


def _temp(record, program="train_step"):
  return next(p for p in record["programs"] if p["name"] == program)["temp_bytes"]


def _check_bank_bound(matrix, topology, suffixes=("", "_skip")):
  for suffix in suffixes:
    bank, own = matrix[topology, "psd_bank" + suffix], matrix[topology, "psd_self" + suffix]
    share = bank["parts"]["bank"]
    excess = _temp(bank) - _temp(own) + _temp(bank, "bank_read")
    assert share > 2 * _temp(own), (share, _temp(own))  # big enough to see a copy
    assert excess <= BOUND * share, (topology, suffix, excess / share)


def test_bank_step_holds_no_copy_of_the_bank_on_cpu(cpu_matrix):
  _check_bank_bound(cpu_matrix, "cpu")


@pytest.mark.parametrize("topology,suffixes", [("v5e:2x2", ("", "_skip")),
                                               ("v4:2x2x1", ("",))])
def test_bank_step_holds_no_copy_of_the_bank_on_tpu(tpu_matrix, topology, suffixes):
  _check_bank_bound(tpu_matrix, topology, suffixes)


def test_every_ci_case_compiles_for_two_tpu_generations_and_colab(tpu_matrix):
  cases = {"demo", "psd_self", "psd_ema", "psd_bank", "siglip", "fsdp",
           "accum_streamed", "rn"}
  for topology, kind in (("v5e:2x2", "TPU v5 lite"), ("v4:2x2x1", "TPU v4")):
    for case in cases:
      r = tpu_matrix[topology, case]
      assert r["device_kind"] == kind and r["num_devices"] == 4
      assert r["fits"] and r["train_flops_per_chip"] > 0, (topology, case)
  colab = tpu_matrix["v2:2x2", "colab_demo"]
  assert colab["num_devices"] == 8 and colab["fits"]
  assert {p["name"] for p in colab["programs"]} == {
      "bank_read", "train_step", "encode_images", "encode_texts"}


def test_reports_split_the_state_and_read_collectives(tpu_matrix):
  fsdp = tpu_matrix["v5e:2x2", "fsdp"]
  dp = tpu_matrix["v5e:2x2", "psd_self"]
  assert fsdp["mesh"] == {"data": 2, "fsdp": 2}
  # FSDP halves the largest params' share and gathers them back.
  assert fsdp["parts"]["params"] < 0.75 * dp["parts"]["params"]
  assert fsdp["collective_bytes_per_chip"]["all-gather"] > 0
  assert dp["collective_bytes_per_chip"]["all-reduce"] > 0
  ema = tpu_matrix["v5e:2x2", "psd_ema"]
  assert ema["parts"]["ema"] == ema["parts"]["params"]
  assert ema["train_flops_per_chip"] > 1.2 * dp["train_flops_per_chip"]


def _aot(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.run([sys.executable, "-m", "cvlg_jax.aot",
                         "--config=configs/demo.py:tiny", "--backend=cpu", *flags],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def test_cli_prints_the_plan_and_writes_json(tmp_path):
  out = _aot(f"--json={tmp_path / 'r.json'}", "--config.train.batch_size=64")
  assert out.returncode == 0, out.stderr[-3000:]
  for word in ("params", "opt_state", "bank", "batch", "train_step",
               "bank_read", "encode_images", "peak", "TFLOP", "all-reduce"):
    assert word in out.stdout, word
  record = json.load(open(tmp_path / "r.json"))
  assert record["num_devices"] == 8 and record["parts"]["bank"] > 0


def test_cli_refuses_in_one_line_what_does_not_fit():
  out = _aot("--hbm_gib=0.001")
  assert out.returncode == 6, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith("does not fit")]
  assert len(lines) == 1 and "largest:" in lines[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  bad = _aot("--topology=v9:2x2", "--backend=tpu")
  assert bad.returncode == 2 and "unknown TPU generation 'v9'" in bad.stderr
