"""Hugging Face ``transformers`` CLIPModel directories <-> cvlg_jax variables.

A directory as ``CLIPModel.save_pretrained`` writes it (``config.json`` +
``model.safetensors``) is read and written with json and ``safetensors.numpy``
only, so neither torch nor transformers is needed (``pytorch_model.bin``
alone does need torch). The tensors are translated to open_clip's layout and
go through ``models/pretrained.py``, so both converters share one set of
shape checks and the same float32 params.

What differs from open_clip's layout, and why the functions still agree:
  * HF keeps separate ``q_proj`` / ``k_proj`` / ``v_proj``; open_clip fuses
    them into ``in_proj`` (concatenated in q, k, v order), so a split and a
    concatenation convert exactly.
  * ``visual_projection`` / ``text_projection`` are ``nn.Linear`` weights
    ``(embed, width)``; open_clip's are ``x @ P`` matrices, their transpose.
  * ``hidden_act`` and ``layer_norm_eps`` are in config.json, and become
    ``model.activation`` / ``model.layer_norm_epsilon``: ``quick_gelu``
    (OpenAI), ``gelu`` (exact), ``gelu_pytorch_tanh`` (= cvlg_jax's default
    ``gelu_tanh``, so models trained with the defaults export too).
  * Text pooling: HF reads the hidden state at ``argmax(input_ids)`` when
    ``eos_token_id == 2`` (old configs, e.g. OpenAI's hub copies), else at
    the first ``eos_token_id``; cvlg_jax at the last non-zero token
    (text.eot_positions). All agree on cvlg_jax's tokens, ``[SOT, ..., EOT,
    0, ...]`` with EOT the largest id (49407), not on the hub tokenizers'
    rows, padded with EOT: tokenize with cvlg_jax's.
  * Same causal mask and LayerNorms (HF's ``pre_layrnorm``, sic); cvlg_jax
    wants exactly ``data.context_length`` tokens, HF takes shorter rows.
``position_ids`` buffers (older transformers saved them) are read, not written.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, NamedTuple

import numpy as np

from cvlg_jax.models import pretrained, registry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # sharded save_pretrained output
TORCH_FILE = "pytorch_model.bin"
INTEROP_HINT = "pip install -r requirements-interop.txt"

# HF hidden_act -> model.activation (gelu_new is the same tanh formula).
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_HF_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# transformers' CLIP config defaults: save_pretrained may omit such keys.
TEXT_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048,
    num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, pad_token_id=1,
    bos_token_id=49406, eos_token_id=49407)
VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
    hidden_act="quick_gelu", layer_norm_eps=1e-5)
TOP_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)
LEGACY_EOS_TOKEN_ID = 2  # HF then pools at argmax(input_ids)
# Registry sizes transformers' CLIPModel can hold: class-token ViTs.
SUPPORTED = tuple(n for n in pretrained.SUPPORTED if registry.VISION_TOWERS[
    registry.MODELS[n]["image"]]["kind"] == "vit")
_IGNORED = ("vision_model.embeddings.position_ids",
            "text_model.embeddings.position_ids")


def _towers(name):
  spec = registry.MODELS[name]
  return (registry.VISION_TOWERS[spec["image"]],
          registry.TEXT_TOWERS[spec["text"]], spec["embed_dim"])


def _sub(cfg: Mapping, name: str, defaults: dict) -> dict:
  """A tower's settings; old hub configs also carry ``*_config_dict``,
  which transformers lets win."""
  return {**defaults, **(cfg.get(f"{name}_config") or {}),
          **(cfg.get(f"{name}_config_dict") or {})}


def _is_clip(cfg) -> bool:
  return isinstance(cfg, dict) and (cfg.get("model_type") == "clip" or
                                    "CLIPModel" in (cfg.get("architectures") or ()))


def _square(value, field: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{field}={list(value)}: cvlg_jax ViTs are square; "
                       "allowed: one int or [n, n]")
    value = value[0]
  return int(value)


def _function(vision: dict, text: dict) -> tuple[str, float]:
  """(model.activation, model.layer_norm_epsilon), one for both towers."""
  for tower, c in (("vision_config", vision), ("text_config", text)):
    if c["hidden_act"] not in ACTIVATIONS:
      raise ValueError(f"{tower}.hidden_act={c['hidden_act']!r} is not "
                       f"supported; allowed: {', '.join(ACTIVATIONS)}")
  act = ACTIVATIONS[vision["hidden_act"]]
  if ACTIVATIONS[text["hidden_act"]] != act:
    raise ValueError(f"text_config.hidden_act={text['hidden_act']!r} differs "
                     f"from vision_config.hidden_act={vision['hidden_act']!r}; "
                     "cvlg_jax has one model.activation for both towers")
  eps = float(vision["layer_norm_eps"])
  if float(text["layer_norm_eps"]) != eps:
    raise ValueError(f"text_config.layer_norm_eps={text['layer_norm_eps']} "
                     f"differs from vision_config.layer_norm_eps={eps}; "
                     "cvlg_jax has one model.layer_norm_epsilon for both towers")
  return act, eps


def model_from_hf_config(cfg: Mapping) -> tuple[str, dict]:
  """A CLIPConfig (config.json as a dict) -> ``(model.name, overrides)``.

  ``overrides`` are the config keys the weights need besides the name:
  ``model.activation``, ``model.layer_norm_epsilon``, ``data.image_size``,
  ``data.context_length`` and ``data.vocab_size`` (the token embedding's
  rows; 49408 is CLIP's BPE, ``data.tokenizer=clip_bpe``). A config the
  registered towers cannot compute is a one-line ValueError naming the
  field and the values allowed.
  """
  if not _is_clip(cfg):
    raise ValueError(f"config.json has model_type={cfg.get('model_type')!r}, "
                     f"architectures={cfg.get('architectures')}; allowed: "
                     "model_type='clip' (CLIPModel)")
  vision = _sub(cfg, "vision", VISION_DEFAULTS)
  text = _sub(cfg, "text", TEXT_DEFAULTS)
  top = {**TOP_DEFAULTS, **{k: cfg[k] for k in TOP_DEFAULTS if k in cfg}}
  activation, eps = _function(vision, text)
  if int(vision["num_channels"]) != 3:
    raise ValueError(f"vision_config.num_channels={vision['num_channels']}; "
                     "allowed: 3")
  patch = _square(vision["patch_size"], "vision_config.patch_size")
  image_size = _square(vision["image_size"], "vision_config.image_size")
  if image_size % patch:
    raise ValueError(f"vision_config.image_size={image_size} is not a multiple "
                     f"of vision_config.patch_size={patch}")
  for tower, c in (("vision_config", vision), ("text_config", text)):
    if int(c["intermediate_size"]) != 4 * int(c["hidden_size"]):
      raise ValueError(f"{tower}.intermediate_size={c['intermediate_size']}: "
                       "cvlg_jax's MLPs are 4 x hidden_size; allowed: "
                       f"{4 * int(c['hidden_size'])}")
  vocab = int(text["vocab_size"])
  eos = text["eos_token_id"]
  if eos not in (LEGACY_EOS_TOKEN_ID, vocab - 1):
    raise ValueError(f"text_config.eos_token_id={eos}: cvlg_jax pools at the "
                     f"end-of-text token, the largest id; allowed: "
                     f"{LEGACY_EOS_TOKEN_ID} (argmax), {vocab - 1}")
  fields = [
      ("vision_config.patch_size", patch, lambda v, t, e: v["patch_size"]),
      ("vision_config.hidden_size", vision["hidden_size"], lambda v, t, e: v["width"]),
      ("vision_config.num_hidden_layers", vision["num_hidden_layers"],
       lambda v, t, e: v["depth"]),
      ("vision_config.num_attention_heads", vision["num_attention_heads"],
       lambda v, t, e: v["heads"]),
      ("text_config.hidden_size", text["hidden_size"], lambda v, t, e: t["width"]),
      ("text_config.num_hidden_layers", text["num_hidden_layers"],
       lambda v, t, e: t["depth"]),
      ("text_config.num_attention_heads", text["num_attention_heads"],
       lambda v, t, e: t["heads"]),
      ("projection_dim", top["projection_dim"], lambda v, t, e: e)]
  names, matched = list(SUPPORTED), []
  for field, value, get in fields:
    keep = [n for n in names if get(*_towers(n)) == value]
    if not keep:
      allowed = ", ".join(str(a) for a in sorted({get(*_towers(n)) for n in names}))
      given = f" with {', '.join(matched)}" if matched else ""
      raise ValueError(f"{field}={value} matches no registered cvlg_jax "
                       f"model{given}; allowed: {allowed}")
    names = keep
    matched.append(f"{field.split('.')[-1]}={value}")
  return names[0], {
      "model.name": names[0], "model.activation": activation,
      "model.layer_norm_epsilon": eps, "data.image_size": image_size,
      "data.context_length": int(text["max_position_embeddings"]),
      "data.vocab_size": vocab}


class _Pair(NamedTuple):
  """One open_clip tensor <-> its HF tensor(s), both ways."""
  oc_key: str
  hf_keys: tuple[str, ...]
  to_oc: Callable[..., np.ndarray]
  to_hf: Callable[[np.ndarray], tuple]


def _rename(oc, hf):
  return _Pair(oc, (hf,), lambda x: x, lambda x: (x,))


def _transpose(oc, hf):
  return _Pair(oc, (hf,), lambda x: x.T, lambda x: (x.T,))


def _qkv(oc, hf, suffix):
  keys = tuple(f"{hf}.{p}_proj.{suffix}" for p in "qkv")
  return _Pair(oc, keys, lambda q, k, v: np.concatenate([q, k, v]),
               lambda x: tuple(np.split(x, 3)))


def _encoder(oc, hf, depth):
  pairs = []
  for i in range(depth):
    o, h = f"{oc}.resblocks.{i}", f"{hf}.layers.{i}"
    for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                 ("attn.out_proj", "self_attn.out_proj"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
      pairs += [_rename(f"{o}.{a}.{s}", f"{h}.{b}.{s}") for s in ("weight", "bias")]
    pairs += [_qkv(f"{o}.attn.in_proj_{s}", f"{h}.self_attn", s)
              for s in ("weight", "bias")]
  return pairs


def _pairs(model_name):
  vision, text, _ = _towers(model_name)
  v, t = "vision_model", "text_model"
  ln = lambda oc, hf: [_rename(f"{oc}.{s}", f"{hf}.{s}") for s in ("weight", "bias")]
  return [
      _rename("visual.class_embedding", f"{v}.embeddings.class_embedding"),
      _rename("visual.conv1.weight", f"{v}.embeddings.patch_embedding.weight"),
      _rename("visual.positional_embedding", f"{v}.embeddings.position_embedding.weight"),
      *ln("visual.ln_pre", f"{v}.pre_layrnorm"),
      *_encoder("visual.transformer", f"{v}.encoder", vision["depth"]),
      *ln("visual.ln_post", f"{v}.post_layernorm"),
      _transpose("visual.proj", "visual_projection.weight"),
      _rename("token_embedding.weight", f"{t}.embeddings.token_embedding.weight"),
      _rename("positional_embedding", f"{t}.embeddings.position_embedding.weight"),
      *_encoder("transformer", f"{t}.encoder", text["depth"]),
      *ln("ln_final", f"{t}.final_layer_norm"),
      _transpose("text_projection", "text_projection.weight"),
      _rename("logit_scale", "logit_scale")]


def _describe(keys, limit=4):
  keys = sorted(keys)
  more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def from_hf_state_dict(tensors: Mapping[str, np.ndarray], cfg: Mapping) -> dict:
  """CLIPModel tensors + its config.json -> ``{"params": ...}`` (float32).

  Missing or unused tensors are named with HF's keys; shapes are checked
  against the registered model (pretrained.from_open_clip_state_dict) and
  against config.json's image size, context length and vocabulary.
  """
  name, overrides = model_from_hf_config(cfg)
  pairs = _pairs(name)
  expected = {k for p in pairs for k in p.hf_keys}
  missing = expected - set(tensors)
  if missing:
    raise ValueError(f"weights lack {_describe(missing)}: not the {name} "
                     "that config.json describes")
  unused = set(tensors) - expected - set(_IGNORED)
  if unused:
    raise ValueError(f"weights have tensors a {name} does not use: "
                     f"{_describe(unused)}")
  oc = {p.oc_key: p.to_oc(*(pretrained.as_numpy(tensors[k]) for k in p.hf_keys))
        for p in pairs}
  sizes = pretrained.input_sizes(oc, name)
  for key, field in (("image_size", "data.image_size"),
                     ("context_length", "data.context_length"),
                     ("vocab_size", "data.vocab_size")):
    if sizes[key] != overrides[field]:
      raise ValueError(f"config.json gives {key}={overrides[field]} but the "
                       f"weights are for {sizes[key]}")
  return pretrained.from_open_clip_state_dict(oc, name)


def to_hf_state_dict(params: Mapping, cfg: Mapping) -> dict[str, np.ndarray]:
  """cvlg_jax params (or ``{"params": ...}``) -> CLIPModel's tensors, with
  the keys ``CLIPModel(CLIPConfig(**cfg)).state_dict()`` has (numpy views;
  copy before writing)."""
  name, _ = model_from_hf_config(cfg)
  variables = params if "params" in params else {"params": params}
  oc = pretrained.to_open_clip_state_dict(variables, name)
  out = {}
  for pair in _pairs(name):
    out.update(zip(pair.hf_keys, pair.to_hf(np.asarray(oc.pop(pair.oc_key)))))
  assert not oc, f"unconverted: {_describe(oc)}"
  return out


def hf_config_for(model_name: str, model: Mapping, *, image_size: int = 224,
                  context_length: int = 77, vocab_size: int = 49408,
                  logit_scale_init_value: float = TOP_DEFAULTS[
                      "logit_scale_init_value"]) -> dict:
  """config.json for a cvlg_jax model; ``model`` is the config's ``model``
  group (``activation``, ``layer_norm_epsilon``). EOT is taken to be the
  last id, SOT the one before, as in CLIP's BPE."""
  if model_name not in SUPPORTED:
    raise ValueError(f"model {model_name!r} has no transformers CLIPModel "
                     f"layout (HF's CLIP is a class-token ViT); allowed: "
                     f"{', '.join(SUPPORTED)}")
  activation = model["activation"]
  if activation not in _HF_ACTIVATION:
    raise ValueError(f"model.activation={activation!r} has no HF hidden_act; "
                     f"allowed: {', '.join(_HF_ACTIVATION)}")
  vision, text, embed = _towers(model_name)
  common = dict(hidden_act=_HF_ACTIVATION[activation], attention_dropout=0.0,
                layer_norm_eps=float(model["layer_norm_epsilon"]),
                initializer_factor=1.0, initializer_range=0.02)
  cfg = dict(
      architectures=["CLIPModel"], model_type="clip", dtype="float32",
      projection_dim=embed, logit_scale_init_value=logit_scale_init_value,
      initializer_factor=1.0,
      vision_config=dict(
          common, model_type="clip_vision_model", hidden_size=vision["width"],
          intermediate_size=4 * vision["width"], projection_dim=embed,
          num_hidden_layers=vision["depth"], num_attention_heads=vision["heads"],
          num_channels=3, image_size=int(image_size),
          patch_size=vision["patch_size"]),
      text_config=dict(
          common, model_type="clip_text_model", vocab_size=int(vocab_size),
          hidden_size=text["width"], intermediate_size=4 * text["width"],
          projection_dim=embed, num_hidden_layers=text["depth"],
          num_attention_heads=text["heads"],
          max_position_embeddings=int(context_length), pad_token_id=1,
          bos_token_id=int(vocab_size) - 2, eos_token_id=int(vocab_size) - 1))
  assert model_from_hf_config(cfg)[0] == model_name, model_name
  return cfg


def is_hf_dir(path: str) -> bool:
  """A directory whose config.json says CLIPModel. Its weights are read by
  load_hf_dir, which says what a pytorch_model.bin-only directory needs."""
  try:
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
      return _is_clip(json.load(f))
  except (OSError, ValueError):
    return False


def _safetensors_numpy():
  try:
    import safetensors.numpy  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("reading and writing model.safetensors needs the "
                     f"safetensors package ({INTEROP_HINT})") from None
  return safetensors.numpy


def read_hf_tensors(path: str) -> dict[str, np.ndarray]:
  """{key: numpy array} of an HF directory: model.safetensors, its shards
  (model.safetensors.index.json), or pytorch_model.bin (needs torch)."""
  join = lambda f: os.path.join(path, f)
  if os.path.isfile(join(WEIGHTS_FILE)):
    return _safetensors_numpy().load_file(join(WEIGHTS_FILE))
  if os.path.isfile(join(INDEX_FILE)):
    with open(join(INDEX_FILE), encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    load = _safetensors_numpy().load_file
    return {k: v for shard in shards for k, v in load(join(shard)).items()}
  if os.path.isfile(join(TORCH_FILE)):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ValueError(f"{path} has {TORCH_FILE} but no {WEIGHTS_FILE}: "
                       f"reading it needs torch ({INTEROP_HINT}), or re-save "
                       "it with save_pretrained(..., safe_serialization=True)"
                       ) from None
    sd = torch.load(join(TORCH_FILE), map_location="cpu", weights_only=True)
    return {k: pretrained.as_numpy(v) for k, v in sd.items()}
  raise FileNotFoundError(f"{path} has a CLIP {CONFIG_FILE} but no "
                          f"{WEIGHTS_FILE}, {INDEX_FILE} or {TORCH_FILE}")


def load_hf_dir(path: str) -> tuple[dict, str, dict]:
  """An HF CLIPModel directory -> ``(variables, model_name, overrides)``
  (see model_from_hf_config for the overrides)."""
  with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
    cfg = json.load(f)
  name, overrides = model_from_hf_config(cfg)
  return from_hf_state_dict(read_hf_tensors(path), cfg), name, overrides


def save_hf_dir(variables: Mapping, model_name: str, model: Mapping,
                out_dir: str) -> str:
  """Writes out_dir/config.json and out_dir/model.safetensors (float32), a
  directory ``CLIPModel.from_pretrained`` loads; sizes are read off the
  weights. ``model`` as in hf_config_for. Returns out_dir."""
  save_file = _safetensors_numpy().save_file
  variables = variables if "params" in variables else {"params": variables}
  sizes = pretrained.input_sizes(
      pretrained.to_open_clip_state_dict(variables, model_name), model_name)
  cfg = hf_config_for(model_name, model, **{k: int(v) for k, v in sizes.items()})
  # C-ordered copies (np.ascontiguousarray would make the 0-d logit_scale 1-d).
  tensors = {k: np.array(v, np.float32, order="C", copy=True)
             for k, v in to_hf_state_dict(variables, cfg).items()}
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE),
            metadata={"format": "pt"})  # from_pretrained requires the format
  with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
    f.write("\n")
  return out_dir
