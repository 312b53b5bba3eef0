"""``python -m cvlg_jax.pretrained import|export`` end to end, on a tiny CLIP.

An open_clip ModifiedResNet CLIP sized like the registry's ``rn_tiny`` (random
weights, random BatchNorm statistics) goes through a .pt file, the import
CLI, ``cvlg_jax.evaluate``, a PSD fine-tuning step (configs/finetune.py) and
the export CLI back into open_clip. Needs the interop extra.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from cvlg_jax.run import checkpointing, loop
from cvlg_jax.step import train_state
from cvlg_jax.cli import weights as cli
from open_clip_fixtures import open_clip_bpe, randomize_batch_norm

from main_runner import REPO
from configs import finetune
from train_fixtures import plan_of

# rn_tiny + text_tiny: ResNet width 16 (features 512, 512 / 256 = 2 heads).
TINY = dict(embed_dim=64,
            vision_cfg=dict(layers=[1, 1, 1, 1], width=16, head_width=256,
                            image_size=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64,
                          heads=2, layers=2))
TOL = 1e-4


def _tiny_open_clip(seed=0):
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(**TINY, quick_gelu=True).eval()
  randomize_batch_norm(model, seed)
  with torch.no_grad():
    model.logit_scale.fill_(math.log(30.0))  # not the init value
  return model


def _run_cli(command, **flags):
  argv = [command] + [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items()]
  try:
    return cli.main(argv)
  except SystemExit as e:  # argparse usage errors, missing extras
    return e.code


def _config(imported, **overrides):
  c = finetune.get_config(f"smoke,model=rn_tiny,vocab={open_clip_bpe()}")
  c.train.init_from = imported
  for key, value in overrides.items():
    group, name = key.rsplit(".", 1)
    c[group][name] = value
  return c


def _inputs():
  rng = np.random.default_rng(1)
  images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  tokens = open_clip.tokenize(["a photo of a cat.", "a red cube on grass"]).numpy()
  return images, tokens


def _reference(model, images, tokens):
  with torch.no_grad():
    img, txt, _ = model(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                        torch.from_numpy(tokens))
  return img.numpy(), txt.numpy()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp("interop")
  model = _tiny_open_clip()
  sd = model.state_dict()
  # open_clip's trainer format: {"state_dict": {"module." + key: ...}, ...}.
  path = str(root / "tiny.pt")
  torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}},
             path)
  out = str(root / "imported")
  assert _run_cli("import", model="rn_tiny", checkpoint=path, out=out,
                  tokenizer_path=open_clip_bpe()) == 0
  return model, out, root


def test_import_records_the_model_and_keeps_the_embeddings(imported):
  model, out, _ = imported
  recorded = json.load(open(os.path.join(out, "config.json")))
  assert recorded["model"]["activation"] == "quick_gelu"
  assert recorded["model"]["layer_norm_epsilon"] == 1e-5
  assert (recorded["data"]["image_size"], recorded["data"]["context_length"]) == (32, 77)
  info = json.load(open(os.path.join(out, "import_info.json")))
  assert info["num_params"] == sum(p.numel() for p in model.parameters())
  # The checkpoint holds exactly the converted weights: the model it
  # configures (evaluate's, see the CLI test below) computes open_clip's
  # embeddings.
  weights = checkpointing.restore_weights(os.path.join(out, "checkpoints", "0"))
  assert set(weights["model_state"]) == {"batch_stats"}
  _, model_ours, _, _ = train_state.build(plan_of(_config("")))
  images, tokens = _inputs()
  img, txt, scale = model_ours.apply(
      {"params": weights["params"], **weights["model_state"]}, images,
      tokens.astype(np.int32))
  ref_img, ref_txt = _reference(model, images, tokens)
  assert float(np.abs(np.asarray(img) - ref_img).max()) <= TOL
  assert float(np.abs(np.asarray(txt) - ref_txt).max()) <= TOL
  assert float(scale) == pytest.approx(30.0, rel=1e-6)


def test_evaluate_cli_runs_on_the_import(imported):
  """The README's command (no eval sets here, so an empty table)."""
  _, out, _ = imported
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "cvlg_jax.evaluate", f"--workdir={out}",
       f"--config=configs/finetune.py:smoke,eval_only,model=rn_tiny,vocab={open_clip_bpe()}"],
      capture_output=True, text=True, env=env, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"eval of step 0 ({out}/checkpoints/0)" in result.stdout
  report = json.load(open(os.path.join(out, "eval", "0.json")))
  assert report["step"] == 0 and report["results"] == {}


def test_export_of_the_import_returns_the_file_exactly(imported, tmp_path):
  model, out, _ = imported
  path = str(tmp_path / "back.pt")
  assert _run_cli("export", workdir=out, out=path) == 0
  back = torch.load(path, weights_only=True)
  sd = model.state_dict()
  assert sorted(back) == sorted(sd)
  for key, value in sd.items():
    assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_finetune_from_the_import_then_export_to_open_clip(imported, tmp_path):
  model, out, _ = imported
  workdir = str(tmp_path / "ft")
  loop.run(_config(out, **{"train.steps": 1}), workdir)
  tuned = checkpointing.restore_weights(os.path.join(workdir, "checkpoints", "1"))
  start = checkpointing.restore_weights(os.path.join(out, "checkpoints", "0"))
  # One AdamW step at lr 1e-5 from the imported weights (not a fresh init).
  deltas = [float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(tuned["params"]), jax.tree.leaves(start["params"]))]
  assert 0 < max(deltas) < 1e-4
  # BatchNorm statistics continue from the imported ones (momentum 0.9).
  var = tuned["model_state"]["batch_stats"]["image_tower"]["stem_norm1"]["var"]
  var0 = start["model_state"]["batch_stats"]["image_tower"]["stem_norm1"]["var"]
  assert np.all(var >= 0.9 * var0 - 1e-6)

  path = str(tmp_path / "tuned.pt")
  assert _run_cli("export", workdir=workdir, out=path) == 0
  reloaded = open_clip.model.CLIP(**TINY, quick_gelu=True).eval()
  reloaded.load_state_dict(torch.load(path, weights_only=True))  # strict
  images, tokens = _inputs()
  ref_img, ref_txt = _reference(reloaded, images, tokens)
  config = _config(out)
  _, ours, _, _ = train_state.build(plan_of(config))
  img, txt, _ = ours.apply({"params": tuned["params"], **tuned["model_state"]},
                           images, tokens.astype(np.int32))
  assert float(np.abs(np.asarray(img) - ref_img).max()) <= TOL
  assert float(np.abs(np.asarray(txt) - ref_txt).max()) <= TOL


def test_cli_refuses_with_one_line_errors(imported, tmp_path, capsys):
  _, out, root = imported
  assert _run_cli("import", model="rn_tiny", checkpoint=str(root / "tiny.pt"),
                  out=out) == 2
  assert "already exists" in capsys.readouterr().err
  assert _run_cli("import", model="vit_b32", checkpoint=str(root / "tiny.pt"),
                  out=str(tmp_path / "x")) == 2
  assert "not a vit_b32 CLIP state dict" in capsys.readouterr().err
  assert _run_cli("import", model="rn_tiny", checkpoint=str(tmp_path / "none.pt"),
                  out=str(tmp_path / "y")) == 2
  assert _run_cli("frobnicate") == 2
  # A model trained with cvlg_jax's default tanh GELU has no open_clip twin.
  config = json.load(open(os.path.join(out, "config.json")))
  config["model"]["activation"] = "gelu_tanh"
  other = tmp_path / "tanh"
  os.makedirs(other / "checkpoints")
  os.symlink(os.path.join(out, "checkpoints", "0"), other / "checkpoints" / "0")
  (other / "config.json").write_text(json.dumps(config))
  assert _run_cli("export", workdir=str(other), out=str(tmp_path / "t.pt")) == 2
  assert "--allow_mismatch" in capsys.readouterr().err
  assert _run_cli("export", workdir=str(other), out=str(tmp_path / "t.pt"),
                  allow_mismatch=True) == 0


# torch 2.14 deprecates TorchScript, but OpenAI's released weights are in it.
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_reads_torchscript_safetensors_and_plain_files(tmp_path):
  linear = torch.nn.Linear(3, 2)
  torch.jit.save(torch.jit.script(linear), str(tmp_path / "jit.pt"))  # as OpenAI's
  torch.save(linear.state_dict(), str(tmp_path / "plain.bin"))
  from safetensors.torch import save_file
  save_file(linear.state_dict(), str(tmp_path / "w.safetensors"))
  for name in ("jit.pt", "plain.bin", "w.safetensors"):
    sd = cli.read_state_dict(str(tmp_path / name))
    assert sorted(sd) == ["bias", "weight"], name
    np.testing.assert_array_equal(sd["weight"], linear.weight.detach().numpy())


def test_missing_torch_says_what_to_install(tmp_path, monkeypatch):
  path = tmp_path / "w.pt"
  path.write_bytes(b"not used")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(SystemExit, match="requirements-interop.txt"):
    cli.read_state_dict(str(path))
