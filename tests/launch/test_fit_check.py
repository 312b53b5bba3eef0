"""``launch.sweep --backend=tpu_vm`` compiles every run for the VM's topology
on this machine first, and stops before creating anything if one does not
fit (launch/fit_check.py)."""

import json
import os
import subprocess
import sys

import pytest

from launch import fit_check
from main_runner import REPO


@pytest.mark.parametrize("accelerator,topology", [
    ("v4-8", "v4:2x2x1"), ("v4-32", "v4:2x2x4"), ("v5litepod-16", "v5e:4x4"),
    ("v5p-8", "v5p:2x2x1"), ("v6e-64", "v6e:8x8"), ("v2-8", "v2:2x2"),
    ("v3-32", "v3:4x4")])
def test_accelerator_types_name_their_topology(accelerator, topology):
  assert fit_check.topology_of(accelerator) == topology


def test_unknown_accelerator_types_are_refused():
  with pytest.raises(ValueError, match="not a TPU type"):
    fit_check.topology_of("a100-8")
  with pytest.raises(ValueError, match="not a slice shape"):
    fit_check.topology_of("v4-24")


def _libtpu_dir():
  folder = os.environ.get("CVLG_LIBTPU_DIR")
  return folder if folder and os.path.isdir(os.path.join(folder, "libtpu")) else None


def test_a_run_that_cannot_fit_stops_the_sweep_before_any_vm(tmp_path):
  libtpu = _libtpu_dir()
  if libtpu is None:
    pytest.skip("libtpu is not installed (scripts/test.sh installs it for CI)")
  record = tmp_path / "gcloud_calls.jsonl"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      f"open({str(record)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n")
  (bin_dir / "gcloud").chmod(0o755)
  sweep = tmp_path / "fit.py"
  sweep.write_text(
      "from launch.spec import Sweep\n"
      "def get_sweep(arg=None):\n"
      "  return Sweep('configs/demo.py:tiny', [{'train.batch_size': 32},\n"
      "               {'train.batch_size': 2 ** 19}])\n")
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             PYTHONPATH=os.pathsep.join([libtpu, REPO]), JAX_PLATFORMS="cpu",
             ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_SKIP_MDS_QUERY="1",
             TPU_WORKER_HOSTNAMES="localhost", TPU_ACCELERATOR_TYPE="v4-8")
  out = subprocess.run(
      [sys.executable, "-m", "launch.sweep", f"--sweep={sweep}",
       "--backend=tpu_vm", "--accelerator_type=v4-8", "--root=gs://b/fit",
       "--repo_url=u"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 6, out.stderr[-3000:]
  assert "fits v4:2x2x1" in out.stdout, out.stdout[-2000:]
  assert "1 run(s) would not run on v4-8; nothing was created" in out.stderr
  assert "does not fit:" in out.stderr and "largest:" in out.stderr
  assert not record.exists() or not [
      c for c in map(json.loads, open(record)) if "create" in c]
