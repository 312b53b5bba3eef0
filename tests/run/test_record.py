"""The run record: config.json and run_info.json (code, versions, devices)."""

import importlib.metadata as md
import json
import subprocess
import sys

import cvlg_jax
from cvlg_jax.run import record
from cvlg_jax.step import sharding
from main_runner import REPO

from configs import demo


def test_run_record_holds_config_code_versions_and_devices(tmp_path):
  c = demo.get_config("tiny")
  c.train.keep_checkpoints = 4
  record.write(c, str(tmp_path), sharding.make_mesh(c.mesh), resumed_from=7)
  config = json.load(open(tmp_path / "config.json"))
  assert config["train"]["keep_checkpoints"] == 4
  psd = config["loss"]["psd"]  # demo.py's (configs/common.DEFAULT_PSD)
  assert (psd["teacher"], psd["alpha_final"], psd["ramp_epochs"]) == ("bank", 0.8, 12.5)
  info = json.load(open(tmp_path / "run_info.json"))
  assert info["cvlg_jax"] == cvlg_jax.__version__
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                        text=True).stdout.strip()
  if head:
    assert info["git_commit"] == head and isinstance(info["git_dirty"], bool)
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
    assert info["versions"][pkg] == md.version(pkg), pkg
  assert len(info["devices"]) == 8 and info["device_kind"] == "cpu"
  assert info["process_count"] == 1 and info["mesh"] == {"data": 8, "fsdp": 1}
  assert info["argv"] == sys.argv and info["resumed_from_step"] == 7
