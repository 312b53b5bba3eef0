"""A run's config read back from its config.json (cvlg_jax.run.saved_config)."""

import json

import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.run.saved_config import differing_keys, load_run_config


def _write(workdir, config):
  (workdir / "config.json").write_text(
      config.to_json_best_effort(indent=2, sort_keys=True))


def test_round_trip_keeps_every_value_and_validates(tmp_path):
  c = config_lib.base_config()
  c.model.name, c.train.steps, c.data.caption_noise = "demo", 7, 0.25
  c.eval.synthetic = dict(type="synthetic", num_zeroshot=10, num_retrieval=5)
  _write(tmp_path, c)
  loaded = load_run_config(str(tmp_path))
  config_lib.validate(loaded)
  assert loaded.to_dict() == c.to_dict()
  assert differing_keys(c, str(tmp_path)) == ""


def test_keys_added_since_the_run_keep_their_defaults_unknown_keys_fail(tmp_path):
  recorded = config_lib.base_config().to_dict()
  del recorded["distributed"]  # a run from before the group existed
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  assert load_run_config(str(tmp_path)).distributed.heartbeat_timeout_s == 100
  recorded["train"]["bogus"] = 1
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  with pytest.raises(config_lib.ConfigError, match="config.train.bogus is unknown"):
    load_run_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="pass --config"):
    load_run_config(str(tmp_path / "none"))


def test_differences_list_shape_keys_first_and_are_capped(tmp_path):
  c = config_lib.base_config()
  _write(tmp_path, c)
  c.train.steps, c.data.image_size, c.model.name = 5, 64, "demo"
  c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay = 0.1, 0.2, 0.3, 0.4
  text = differing_keys(c, str(tmp_path), limit=3)
  assert text == ("data.image_size (32 in config.json, 64 here), model.name "
                  "('tiny' in config.json, 'demo' here), optim.b1 (0.9 in "
                  "config.json, 0.1 here) and 4 more")


def test_resume_refuses_what_shapes_the_state_or_the_data_order(tmp_path):
  from cvlg_jax.run.saved_config import ConfigMismatchError, check_resume
  c = config_lib.base_config()
  _write(tmp_path, c)
  c.data.num_heldout, c.model.name = 64, "demo"  # remaps bank rows; new params
  with pytest.raises(ConfigMismatchError) as e:
    check_resume(c, str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert "data.num_heldout (0 -> 64)" in message and "model.name ('tiny' -> 'demo')" in message
  assert "a new --workdir" in message


def test_resume_lists_what_may_change(tmp_path):
  from cvlg_jax.run.saved_config import check_resume, resume_changes
  c = config_lib.base_config()
  _write(tmp_path, c)
  c.train.steps, c.optim.learning_rate = 30, 1e-3
  assert check_resume(c, str(tmp_path)) == {
      "optim.learning_rate": [5e-4, 1e-3], "train.steps": [1000, 30]}
  assert resume_changes(c, str(tmp_path / "fresh")) == ([], {})


def test_a_run_from_before_a_key_existed_resumes_with_its_default(tmp_path):
  """config.json of a run made before data.noise_kinds and
  loss.psd.ramp_epochs existed: resuming with the defaults changes nothing;
  another noise kind changes the data and is refused."""
  from cvlg_jax.run.saved_config import ConfigMismatchError, check_resume
  recorded = config_lib.base_config().to_dict()
  del recorded["data"]["noise_kinds"], recorded["loss"]["psd"]["ramp_epochs"]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  c = config_lib.base_config()
  assert check_resume(c, str(tmp_path)) == {}
  c.loss.psd.ramp_epochs = 2.0
  assert check_resume(c, str(tmp_path)) == {"loss.psd.ramp_epochs": [0.0, 2.0]}
  c.data.noise_kinds = "partial"
  with pytest.raises(ConfigMismatchError, match="data.noise_kinds"):
    check_resume(c, str(tmp_path))
