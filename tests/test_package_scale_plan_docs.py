"""The scale-plan tables in BENCHMARKS.md and README.md are the ones
benchmarks/scale_plan.py generates from benchmarks/scale_plan.json (never
typed), and every config fits its recommended slice with 10 % headroom."""

import importlib.util
import json
import os

from main_runner import REPO


def _scale_plan():
  path = os.path.join(REPO, "benchmarks", "scale_plan.py")
  spec = importlib.util.spec_from_file_location("scale_plan", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _records():
  with open(os.path.join(REPO, "benchmarks", "scale_plan.json")) as f:
    return json.load(f)["records"]


def test_docs_tables_are_generated_from_the_json():
  plan = _scale_plan()
  for name, text in plan.docs_with_tables(_records(), REPO).items():
    with open(os.path.join(REPO, name)) as f:
      assert f.read() == text, (f"{name}'s scale-plan table is stale: python "
                                "benchmarks/scale_plan.py --write_docs="
                                "benchmarks/scale_plan.json")


def test_every_config_and_model_fits_its_recommended_slice_with_headroom():
  plan = _scale_plan()
  records = _records()
  recommended = {(r["config"], r["model"]) for r in records if r["recommended"]}
  assert recommended == {(c, m) for c in plan.CONFIGS for m in plan.MODELS}
  for r in records:
    if r["recommended"]:
      assert r["topology"] == plan.RECOMMENDED[r["config"]]
      assert r["headroom"] >= plan.HEADROOM, (r["config"], r["model"], r["headroom"])
