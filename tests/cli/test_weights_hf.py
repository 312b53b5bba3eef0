"""``python -m cvlg_jax.pretrained import`` of a Hugging Face CLIPModel
directory (model inferred from its config.json), ``export --format=hf``
back, and ``train.init_from`` on the imported workdir. Needs only
safetensors: the directory is written by cvlg_jax itself (transformers'
own loading of an export is tested in tests/models/test_hf_clip.py)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")

from cvlg_jax.cli import weights as cli
from cvlg_jax.models import hf_clip, registry
from cvlg_jax.run import init_from, loop

from configs import demo

SIZES = dict(image_size=64, context_length=16, vocab_size=1000)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  model = registry.build_model("bench_s32", vocab_size=SIZES["vocab_size"])
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 16), jnp.int32)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda x: rng.standard_normal(x.shape).astype(np.float32), dict(shapes))
  out = tmp_path_factory.mktemp("hf") / "clip-small"
  return hf_clip.save_hf_dir(variables, "bench_s32",
                             {"activation": "quick_gelu", "layer_norm_epsilon": 1e-5},
                             str(out))  # sizes are read off the weights


def test_import_infers_the_model_and_export_is_bitwise(hf_dir, tmp_path, capsys):
  work = tmp_path / "imported"
  assert cli.main(["import", f"--checkpoint={hf_dir}", f"--out={work}"]) == 0
  recorded = init_from.recorded_model(str(work / "checkpoints" / "0"))
  assert (recorded["name"], recorded["activation"],
          recorded["layer_norm_epsilon"]) == ("bench_s32", "quick_gelu", 1e-5)
  back = tmp_path / "exported"
  assert cli.main(["export", f"--workdir={work}", f"--out={back}",
                   "--format=hf"]) == 0
  want, got = hf_clip.read_hf_tensors(hf_dir), hf_clip.read_hf_tensors(str(back))
  assert want.keys() == got.keys()
  for key in want:
    assert want[key].dtype == got[key].dtype and want[key].tobytes() == got[key].tobytes(), key
  assert "bench_s32" in capsys.readouterr().out


def test_a_disagreeing_model_flag_is_refused(hf_dir, tmp_path):
  with pytest.raises(ValueError, match="--model=vit_b32, but .*model.name=bench_s32"):
    cli.import_checkpoint("vit_b32", hf_dir, str(tmp_path / "w"))


def test_init_from_accepts_the_imported_workdir(hf_dir, tmp_path):
  work = tmp_path / "imported"
  cli.main(["import", f"--checkpoint={hf_dir}", f"--out={work}"])
  c = demo.get_config("tiny,clip")
  c.model.name, c.model.activation, c.model.layer_norm_epsilon = (
      "bench_s32", "quick_gelu", 1e-5)
  c.data.image_size, c.data.context_length, c.data.vocab_size = 64, 16, 1000
  c.train.steps, c.train.batch_size, c.eval = 1, 8, {}
  c.train.init_from = str(work)
  metrics = loop.run(c, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"])
