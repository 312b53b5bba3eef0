"""Released CLIP weights in and out of cvlg_jax checkpoints.

    python -m cvlg_jax.pretrained import --model=vit_b32 --checkpoint=ViT-B-32.pt \
        --out=DIR [--activation=quick_gelu] [--tokenizer_path=bpe_simple_vocab_16e6.txt.gz]
    python -m cvlg_jax.pretrained export --workdir=DIR --out=finetuned.pt

``import`` reads an OpenAI CLIP archive (``ViT-B-32.pt``, TorchScript), an
open_clip checkpoint (``{"state_dict": ...}`` from its trainer, or a plain
``state_dict``) or a ``.safetensors`` file, converts it exactly
(models/pretrained.py) and writes ``DIR/checkpoints/0/state`` (params and
BatchNorm statistics only) plus ``DIR/config.json`` recording the model
options the weights need. ``cvlg_jax.evaluate --workdir=DIR`` and
``train.init_from=DIR`` read it. ``--activation=gelu`` is for open_clip's own
(non-``quickgelu``) models; OpenAI's weights use the default ``quick_gelu``.

``export`` writes the newest (or ``--checkpoint``) step of a cvlg_jax workdir
as an open_clip state dict (``.pt``, or ``.safetensors``), for
``open_clip.create_model(NAME).load_state_dict(...)``; NAME is printed.

Reading or writing ``.pt`` needs PyTorch (``pip install -r
requirements-interop.txt``); nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

import numpy as np

from cvlg_jax import fileio
from cvlg_jax.models import hf_clip
from cvlg_jax.models import pretrained as convert

INTEROP_HINT = "pip install -r requirements-interop.txt"


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit(f"error: .pt files need PyTorch, which is not installed "
                     f"(an optional extra: {INTEROP_HINT})") from None
  return torch


def _is_torchscript(path: str) -> bool:
  """OpenAI's released .pt files are TorchScript archives, not pickles."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("/constants.pkl") for n in z.namelist())


def read_state_dict(path: str) -> dict:
  """{key: numpy array} from a .pt / .bin / .safetensors checkpoint file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--checkpoint={path} is not a file")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise SystemExit(f"error: .safetensors files need safetensors "
                       f"({INTEROP_HINT})") from None
    return load_file(path)
  torch = _torch()
  if _is_torchscript(path):
    sd = torch.jit.load(path, map_location="cpu").state_dict()
  else:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
      sd = sd["state_dict"]  # open_clip's training checkpoints
  if not isinstance(sd, dict):
    raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
  return {k: convert.as_numpy(v) for k, v in sd.items()}


def write_state_dict(state_dict: dict, path: str) -> None:
  # Writable C-ordered copies (np.ascontiguousarray would make 0-d arrays 1-d).
  arrays = {k: np.array(v, order="C", copy=True) for k, v in state_dict.items()}
  fileio.makedirs(os.path.dirname(os.path.abspath(path)))
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file(arrays, path)
    return
  torch = _torch()
  torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)


def import_checkpoint(model_name: str | None, checkpoint: str, out: str, *,
                      activation: str | None = None,
                      tokenizer_path: str = "") -> str:
  """Writes ``out/checkpoints/0`` and ``out/config.json``; returns the step dir."""
  if hf_clip.is_hf_dir(checkpoint):
    return import_hf_dir(checkpoint, out, model_name=model_name,
                         activation=activation, tokenizer_path=tokenizer_path)
  if model_name is None:
    raise ValueError("--model is needed unless --checkpoint is a Hugging Face "
                     "CLIPModel directory (whose config.json names it)")
  activation = activation or "quick_gelu"
  import jax  # pylint: disable=import-outside-toplevel
  from cvlg_jax.run import checkpointing
  from cvlg_jax.config import base_config

  step_dir = os.path.join(fileio.absolute(out), "checkpoints", "0")
  if fileio.exists(step_dir):
    raise FileExistsError(f"{step_dir} already exists; choose another --out")
  state_dict = read_state_dict(checkpoint)
  variables = convert.from_open_clip_state_dict(state_dict, model_name)
  sizes = convert.input_sizes(state_dict, model_name)
  params = variables.pop("params")
  checkpointing.save_weights(step_dir, params, variables or None)

  config = base_config()
  config.model.name = model_name
  config.model.activation = activation
  config.model.layer_norm_epsilon = convert.RELEASE_LAYER_NORM_EPSILON
  config.data.tokenizer = "clip_bpe"
  config.data.tokenizer_path = tokenizer_path
  config.data.image_size = int(sizes["image_size"])
  config.data.context_length = int(sizes["context_length"])
  fileio.write_text_atomic(os.path.join(out, "config.json"),
                           config.to_json_best_effort(indent=2, sort_keys=True))
  count = sum(int(np.size(v)) for v in jax.tree.leaves(params))
  info = dict(source=os.path.abspath(checkpoint), model=model_name,
              activation=activation, num_params=count,
              open_clip_name=convert.open_clip_model_name(model_name, activation)
              if model_name in convert.OPEN_CLIP_NAMES else None,
              **{k: int(v) for k, v in sizes.items()})
  fileio.write_text_atomic(os.path.join(out, "import_info.json"),
                           json.dumps(info, indent=2))
  return step_dir


def export_checkpoint(workdir: str, out: str, *, checkpoint: str | None = None,
                      allow_mismatch: bool = False) -> str:
  """Writes the workdir's weights as an open_clip state dict; returns the
  open_clip model name to load it into (None for sizes open_clip lacks)."""
  from cvlg_jax.run import checkpointing, init_from

  step_dir = init_from.find_step_dir(checkpoint or workdir)
  model = init_from.recorded_model(step_dir)
  if model is None:
    raise FileNotFoundError(f"no config.json next to {step_dir}'s checkpoints "
                            "(the workdir of a cvlg_jax run or import)")
  if not allow_mismatch and (
      model["activation"] not in ("quick_gelu", "gelu")
      or model["layer_norm_epsilon"] != convert.RELEASE_LAYER_NORM_EPSILON):
    raise ValueError(
        f"the model ran with activation={model['activation']!r}, "
        f"layer_norm_epsilon={model['layer_norm_epsilon']}; open_clip's CLIP "
        f"has quick_gelu or gelu and 1e-5, so it would compute something "
        "else (pass --allow_mismatch to export anyway)")
  weights = checkpointing.restore_weights(step_dir)
  variables = {"params": weights["params"], **(weights["model_state"] or {})}
  write_state_dict(convert.to_open_clip_state_dict(variables, model["name"]), out)
  activation = model["activation"] if model["activation"] != "gelu_tanh" else "gelu"
  return (convert.open_clip_model_name(model["name"], activation)
          if model["name"] in convert.OPEN_CLIP_NAMES else None)


def import_hf_dir(path: str, out: str, *, model_name: str | None = None,
                  activation: str | None = None, tokenizer_path: str = "") -> str:
  """A transformers CLIPModel directory -> ``out/checkpoints/0`` and
  ``out/config.json``; returns the step dir. The model, activation, LayerNorm
  epsilon and input sizes are read from its config.json, so a --model or
  --activation that disagrees is an error rather than an override."""
  import jax  # pylint: disable=import-outside-toplevel
  from cvlg_jax.config import base_config
  from cvlg_jax.run import checkpointing

  step_dir = os.path.join(fileio.absolute(out), "checkpoints", "0")
  if fileio.exists(step_dir):
    raise FileExistsError(f"{step_dir} already exists; choose another --out")
  variables, name, overrides = hf_clip.load_hf_dir(path)
  for flag, given, key in (("--model", model_name, "model.name"),
                           ("--activation", activation, "model.activation")):
    if given is not None and given != overrides[key]:
      raise ValueError(f"{flag}={given}, but {path}/config.json gives "
                       f"{key}={overrides[key]} (leave {flag} out)")
  params = variables["params"]
  checkpointing.save_weights(step_dir, params)
  config = base_config()
  for key, value in overrides.items():  # model.name, model.activation, ...
    group, field = key.split(".")
    config[group][field] = value
  config.data.tokenizer = "clip_bpe"
  config.data.tokenizer_path = tokenizer_path
  fileio.write_text_atomic(os.path.join(out, "config.json"),
                           config.to_json_best_effort(indent=2, sort_keys=True))
  act = overrides["model.activation"]
  info = dict(source=os.path.abspath(path), format="hf", model=name,
              activation=act,
              layer_norm_epsilon=overrides["model.layer_norm_epsilon"],
              num_params=sum(int(np.size(v)) for v in jax.tree.leaves(params)),
              open_clip_name=convert.open_clip_model_name(name, act)
              if name in convert.OPEN_CLIP_NAMES and act in ("quick_gelu", "gelu")
              else None,
              image_size=overrides["data.image_size"],
              context_length=overrides["data.context_length"],
              vocab_size=overrides["data.vocab_size"])
  fileio.write_text_atomic(os.path.join(out, "import_info.json"),
                           json.dumps(info, indent=2))
  return step_dir


def export_hf_dir(workdir: str, out: str, *, checkpoint: str | None = None) -> str:
  """Writes the workdir's weights as a transformers CLIPModel directory
  (config.json + model.safetensors); returns it. No --allow_mismatch needed:
  config.json carries any activation (gelu_tanh too) and epsilon."""
  from cvlg_jax.run import checkpointing, init_from

  step_dir = init_from.find_step_dir(checkpoint or workdir)
  model = init_from.recorded_model(step_dir)
  if model is None:
    raise FileNotFoundError(f"no config.json next to {step_dir}'s checkpoints "
                            "(the workdir of a cvlg_jax run or import)")
  weights = checkpointing.restore_weights(step_dir)
  return hf_clip.save_hf_dir(weights["params"], model["name"], model, out)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m cvlg_jax.pretrained",
      description="Released CLIP weights in and out of cvlg_jax checkpoints.")
  commands = parser.add_subparsers(dest="command", required=True)
  imp = commands.add_parser("import", help="a .pt/.safetensors file -> a "
                            "cvlg_jax checkpoint workdir")
  imp.add_argument("--model", default=None, choices=sorted(convert.SUPPORTED),
                   help="cvlg_jax model name (read from config.json for a "
                   "Hugging Face directory)")
  imp.add_argument("--checkpoint", required=True,
                   help="OpenAI .pt archive, open_clip .pt/.bin, .safetensors, or a "
                   "Hugging Face CLIPModel directory")
  imp.add_argument("--out", required=True, help="output workdir (new)")
  imp.add_argument("--activation", default=None,
                   choices=["quick_gelu", "gelu"],
                   help="MLP activation the weights were trained with: OpenAI "
                   "quick_gelu (default); open_clip configs without -quickgelu: gelu")
  imp.add_argument("--tokenizer_path", default="",
                   help="CLIP BPE merges file to record in config.json")
  exp = commands.add_parser("export", help="a cvlg_jax workdir -> an open_clip "
                            "state dict")
  exp.add_argument("--workdir", required=True, help="cvlg_jax workdir")
  exp.add_argument("--checkpoint", default=None,
                   help="a step directory (default: the workdir's newest)")
  exp.add_argument("--out", required=True, help="output .pt or .safetensors "
                   "file; with --format=hf a directory")
  exp.add_argument("--format", default="open_clip", choices=["open_clip", "hf"],
                   help="open_clip state dict (default) or a Hugging Face "
                   "CLIPModel directory (config.json + model.safetensors)")
  exp.add_argument("--allow_mismatch", action="store_true",
                   help="export a model whose activation / layer-norm epsilon "
                   "open_clip cannot reproduce (its outputs will differ)")
  return parser


def main(argv=None) -> int:
  """The CLI; returns the exit status (2: a one-line error on stderr)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  args = _parser().parse_args(argv)
  from cvlg_jax.config import ConfigError
  try:
    if args.command == "import":
      step_dir = import_checkpoint(args.model, args.checkpoint, args.out,
                                   activation=args.activation,
                                   tokenizer_path=args.tokenizer_path)
      from cvlg_jax.run import init_from  # pylint: disable=import-outside-toplevel
      model = init_from.recorded_model(step_dir)
      print(f"wrote {step_dir} (model.name={model['name']}, model.activation="
            f"{model['activation']}, model.layer_norm_epsilon="
            f"{model['layer_norm_epsilon']}; see "
            f"{os.path.join(args.out, 'config.json')})")
    elif args.format == "hf":
      out = export_hf_dir(args.workdir, args.out, checkpoint=args.checkpoint)
      print(f"wrote {out}; load it with transformers.CLIPModel."
            f"from_pretrained({out!r})")
    else:
      name = export_checkpoint(args.workdir, args.out, checkpoint=args.checkpoint,
                               allow_mismatch=args.allow_mismatch)
      hint = (f"open_clip.create_model({name!r}).load_state_dict(torch.load(...))"
              if name else "an open_clip model config of the same size")
      print(f"wrote {args.out}; load it with {hint}")
  except (ValueError, FileNotFoundError, FileExistsError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def run():
  """The command line (``python -m`` of the entry module)."""
  sys.exit(main())
