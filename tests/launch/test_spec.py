"""What a sweep is: grids, zips, products, run names, duplicates, and the
expansion checked against the config schema."""


import pytest

from launch import spec
from launch.spec import Sweep, SweepError, grid, product, zip_

# A value a shell would act on: it must stay one literal token everywhere.
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
