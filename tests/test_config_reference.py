"""docs/config.md stays true to the schema: every key documented, none
invented, every evaluator type described, the file regenerated."""

import os
import subprocess
import sys

from cvlg_jax import config as config_lib
from cvlg_jax import config_reference
from cvlg_jax.evaluation.common import registered_types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_schema_key_has_one_meaning_and_no_other():
  keys = {k for k, _ in config_reference.leaves(config_lib.base_config())}
  assert keys == set(config_reference.MEANINGS), (
      "undocumented: " + ", ".join(sorted(keys - set(config_reference.MEANINGS)))
      + "; unknown: " + ", ".join(sorted(set(config_reference.MEANINGS) - keys)))
  groups = {k.split(".")[0] for k in keys} | {"eval"}
  assert groups == set(config_reference.GROUPS)


def test_meanings_are_one_line():
  for key, line in config_reference.MEANINGS.items():
    assert line and "\n" not in line and "|" not in line, key


def test_every_evaluator_type_is_described():
  assert set(registered_types()) == set(config_reference.EVALUATORS)


def test_markdown_lists_each_key_with_its_default():
  text = config_reference.markdown()
  assert "| `loss.psd.ramp_fraction` | `1.0` |" in text
  assert "| `train.batch_size` | `256` |" in text
  assert "| `model.name` | `\"tiny\"` |" in text


def test_docs_config_md_is_generated():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "config_reference.py"), "--check"],
      capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
