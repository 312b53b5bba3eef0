"""Released CLIP weights <-> cvlg_jax variables, tensor for tensor.

The torch side is OpenAI's CLIP layout as open_clip names it
(``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``,
``token_embedding.weight``, ``text_projection``, ``logit_scale``, ...): what
``open_clip.create_model(name).state_dict()`` holds and what OpenAI's
``.pt`` archives and open_clip's released checkpoints contain. No torch is
needed here: values may be numpy arrays or anything ``np.asarray`` reads
(torch tensors are converted by the caller, see ``cvlg_jax.pretrained``).

The state dict holds shapes, not functions. What must also match the release,
and is set on the cvlg_jax side by config:
  * ``model.activation``: ``"quick_gelu"`` for OpenAI's weights (open_clip's
    ``*-quickgelu`` configs), ``"gelu"`` for open_clip's other configs;
  * ``model.layer_norm_epsilon=1e-5`` (PyTorch's LayerNorm);
  * the attention head counts, the class-token ViT, ln_pre, the causal text
    mask with end-of-text pooling and the ResNet's attention pool are those
    of the registry sizes already (``registry.py``).
Image size, context length and vocabulary size are read off the state dict
(positional embeddings, token embedding).

Layout conversions (torch -> flax): Linear ``(out, in)`` -> Dense kernel
``(in, out)``; Conv ``(O, I, kh, kw)`` -> ``(kh, kw, I, O)``; the fused
attention ``in_proj`` ``(3w, w)`` -> query/key/value kernels ``(w, heads,
head_dim)``; ``proj`` / ``text_projection`` are already ``x @ P`` matrices.
Every conversion is a transpose, reshape or split, so a round trip returns
every float tensor bit for bit. BatchNorm's ``num_batches_tracked`` counter
is not a weight (CLIP's momentum BatchNorm never reads it) and comes back as 0.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import numpy as np

from cvlg_jax.models import registry

# cvlg_jax registry name -> open_clip model name (append "-quickgelu" for
# OpenAI's release, see open_clip_model_name).
OPEN_CLIP_NAMES = {"vit_b32": "ViT-B-32", "vit_b16": "ViT-B-16",
                   "vit_l14": "ViT-L-14", "rn50": "RN50"}
# Entries that carry no weights: OpenAI's archives store these three ints,
# PyTorch's BatchNorm a step counter, old open_clip versions the causal mask.
# Registry sizes with CLIP's layout (class-token ViTs and ModifiedResNets);
# the four with released weights are OPEN_CLIP_NAMES.
SUPPORTED = tuple(
    name for name, spec in registry.MODELS.items()
    if registry.VISION_TOWERS[spec["image"]].get("pool", "cls") == "cls")
_SKIPPED_SUFFIXES = ("num_batches_tracked", "attn_mask")
_SKIPPED_KEYS = ("input_resolution", "context_length", "vocab_size")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers
RELEASE_LAYER_NORM_EPSILON = 1e-5


def open_clip_model_name(model_name: str, activation: str = "quick_gelu") -> str:
  """The open_clip config with the same function: ``"ViT-B-32-quickgelu"``
  for OpenAI's weights, ``"ViT-B-32"`` for open_clip's GELU models."""
  if model_name not in OPEN_CLIP_NAMES:
    raise ValueError(f"model {model_name!r} has no open_clip counterpart; "
                     f"known: {', '.join(OPEN_CLIP_NAMES)}")
  if activation not in ("quick_gelu", "gelu"):
    raise ValueError(f"activation={activation!r}: open_clip models use "
                     "'quick_gelu' or 'gelu'")
  base = OPEN_CLIP_NAMES[model_name]
  return base + "-quickgelu" if activation == "quick_gelu" else base


class _Rule(NamedTuple):
  """Torch keys <-> flax paths, with the two (inverse) conversions."""
  torch_keys: tuple[str, ...]
  flax_paths: tuple[tuple[str, ...], ...]
  to_flax: Callable[..., tuple]
  to_torch: Callable[..., tuple]


def _same(t, f):
  return _Rule((t,), (f,), lambda x: (x,), lambda x: (x,))


def _lead(t, f, n):
  """A tensor that flax keeps with ``n`` leading singleton axes."""
  return _Rule((t,), (f,), lambda x: (x.reshape((1,) * n + x.shape),),
               lambda x: (x.reshape(x.shape[n:]),))


def _conv(t, f):
  return _Rule((t,), (f,), lambda x: (x.transpose(2, 3, 1, 0),),
               lambda x: (x.transpose(3, 2, 0, 1),))


def _linear(t, f):
  return [_Rule((t + ".weight",), (f + ("kernel",),), lambda x: (x.T,),
                lambda x: (x.T,)),
          _same(t + ".bias", f + ("bias",))]


def _layer_norm(t, f):
  return [_same(t + ".weight", f + ("scale",)), _same(t + ".bias", f + ("bias",))]


def _batch_norm(t, f):
  stats = ("batch_stats",) + f[1:]
  return [_same(t + ".weight", f + ("scale",)), _same(t + ".bias", f + ("bias",)),
          _same(t + ".running_mean", stats + ("mean",)),
          _same(t + ".running_var", stats + ("var",))]


def _attention(t, f, heads):
  """nn.MultiheadAttention (fused q/k/v) <-> flax MultiHeadDotProductAttention."""
  def to_flax(w_in, b_in, w_out, b_out):
    width = w_out.shape[0]
    hd = width // heads
    kernels = [w.T.reshape(width, heads, hd) for w in np.split(w_in, 3)]
    biases = [b.reshape(heads, hd) for b in np.split(b_in, 3)]
    return (*kernels, *biases, w_out.T.reshape(heads, hd, width), b_out)

  def to_torch(qk, kk, vk, qb, kb, vb, ok, ob):
    width = qk.shape[0]
    w_in = np.concatenate([k.reshape(width, width).T for k in (qk, kk, vk)])
    b_in = np.concatenate([b.reshape(width) for b in (qb, kb, vb)])
    return w_in, b_in, ok.reshape(width, width).T, ob

  keys = tuple(t + k for k in (".in_proj_weight", ".in_proj_bias",
                               ".out_proj.weight", ".out_proj.bias"))
  paths = tuple(f + p for p in (
      ("query", "kernel"), ("key", "kernel"), ("value", "kernel"),
      ("query", "bias"), ("key", "bias"), ("value", "bias"),
      ("out", "kernel"), ("out", "bias")))
  return [_Rule(keys, paths, to_flax, to_torch)]


def _encoder(t, f, depth, heads):
  rules = []
  for i in range(depth):
    tb, fb = f"{t}.resblocks.{i}", f + ("encoder", f"block{i}")
    rules += _layer_norm(tb + ".ln_1", fb + ("ln1",))
    rules += _attention(tb + ".attn", fb + ("attn",), heads)
    rules += _layer_norm(tb + ".ln_2", fb + ("ln2",))
    rules += _linear(tb + ".mlp.c_fc", fb + ("mlp", "fc1"))
    rules += _linear(tb + ".mlp.c_proj", fb + ("mlp", "fc2"))
  return rules


def _vit_rules(spec):
  f = ("params", "image_tower")
  return [_conv("visual.conv1.weight", f + ("patch_embed", "kernel")),
          _lead("visual.class_embedding", f + ("cls",), 2),
          _lead("visual.positional_embedding", f + ("pos_embedding",), 1),
          *_layer_norm("visual.ln_pre", f + ("ln_pre",)),
          *_encoder("visual.transformer", f, spec["depth"], spec["heads"]),
          *_layer_norm("visual.ln_post", f + ("ln_post",)),
          _same("visual.proj", ("params", "image_proj", "kernel"))]


def _resnet_rules(spec):
  f = ("params", "image_tower")
  rules = []
  for i in (1, 2, 3):
    rules += [_conv(f"visual.conv{i}.weight", f + (f"stem_conv{i}", "kernel"))]
    rules += _batch_norm(f"visual.bn{i}", f + (f"stem_norm{i}",))
  for stage, blocks in enumerate(spec["layers"], start=1):
    for j in range(blocks):
      t, fb = f"visual.layer{stage}.{j}", f + (f"layer{stage}_{j}",)
      for k in (1, 2, 3):
        rules += [_conv(f"{t}.conv{k}.weight", fb + (f"conv{k}", "kernel"))]
        rules += _batch_norm(f"{t}.bn{k}", fb + (f"norm{k}",))
      if j == 0:  # CLIP's first block of every stage changes width or stride
        rules += [_conv(f"{t}.downsample.0.weight", fb + ("downsample_conv", "kernel"))]
        rules += _batch_norm(f"{t}.downsample.1", fb + ("downsample_norm",))
  pool = f + ("attnpool",)
  rules += [_same("visual.attnpool.positional_embedding",
                  pool + ("positional_embedding",))]
  for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
    rules += _linear(f"visual.attnpool.{name}", pool + (name,))
  return rules


def _text_rules(spec):
  f = ("params", "text_tower")
  return [_same("token_embedding.weight", f + ("token_embedding", "embedding")),
          _lead("positional_embedding", f + ("pos_embedding",), 1),
          *_encoder("transformer", f, spec["depth"], spec["heads"]),
          *_layer_norm("ln_final", f + ("ln_final",)),
          _same("text_projection", ("params", "text_proj", "kernel")),
          _same("logit_scale", ("params", "logit_scale"))]


def _image_spec(model_name):
  if model_name not in registry.MODELS:
    raise ValueError(f"model {model_name!r} is unknown; allowed: "
                     f"{', '.join(registry.MODELS)}")
  spec = registry.VISION_TOWERS[registry.MODELS[model_name]["image"]]
  if spec["kind"] == "vit" and spec.get("pool", "cls") != "cls":
    raise ValueError(f"model {model_name!r} pools by averaging, which CLIP's "
                     "layout has no weights for; use a class-token size "
                     f"({', '.join(OPEN_CLIP_NAMES)})")
  return spec


def _rules(model_name):
  image = _image_spec(model_name)
  text = registry.TEXT_TOWERS[registry.MODELS[model_name]["text"]]
  image_rules = _vit_rules(image) if image["kind"] == "vit" else _resnet_rules(image)
  return image_rules + _text_rules(text)


def as_numpy(value):
  """numpy view of an array-like; torch tensors (any float dtype) included."""
  if hasattr(value, "detach"):  # torch, without importing it
    value = value.detach().cpu()
    value = (value.float() if value.is_floating_point() else value).numpy()
  return value


def _clean(state_dict: Mapping) -> dict:
  out = {}
  for key, value in state_dict.items():
    for prefix in _PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
    if key in _SKIPPED_KEYS or key.endswith(_SKIPPED_SUFFIXES):
      continue
    out[key] = as_numpy(value)
  return out


def _grid(rows: int, what: str) -> int:
  side = int(round((rows - 1) ** 0.5))
  if side * side != rows - 1:
    raise ValueError(f"{what} has {rows} rows, not 1 + a square grid")
  return side


def input_sizes(state_dict: Mapping, model_name: str) -> dict:
  """``image_size``, ``context_length`` and ``vocab_size`` the weights were
  made for, read off their positional and token embeddings."""
  sd = _clean(state_dict)
  spec = _image_spec(model_name)
  if spec["kind"] == "vit":
    key, scale = "visual.positional_embedding", spec["patch_size"]
  else:
    key, scale = "visual.attnpool.positional_embedding", 32
  for k in ("positional_embedding", "token_embedding.weight", key):
    if k not in sd:
      raise ValueError(f"state dict has no {k!r}: not a {model_name} CLIP "
                       "state dict")
  return dict(image_size=_grid(np.shape(sd[key])[0], key) * scale,
              context_length=np.shape(sd["positional_embedding"])[0],
              vocab_size=np.shape(sd["token_embedding.weight"])[0])


def _expected_shapes(model_name, sd) -> dict:
  """Flat {path: shape} of the cvlg_jax variables these weights must fill."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  sizes = input_sizes(sd, model_name)
  size, context = sizes["image_size"], sizes["context_length"]
  model = registry.build_model(model_name, vocab_size=sizes["vocab_size"])
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)),
      jnp.zeros((1, context), jnp.int32)))
  return {p: tuple(v.shape) for p, v in
          traverse_util.flatten_dict(dict(variables)).items()}


def _describe(paths, limit=4):
  shown = ", ".join("/".join(p) if isinstance(p, tuple) else p
                    for p in list(paths)[:limit])
  return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")


def from_open_clip_state_dict(state_dict: Mapping, model_name: str) -> dict:
  """open_clip / OpenAI state dict -> ``{"params": ..., ["batch_stats": ...]}``.

  Values become float32 numpy arrays (OpenAI's archives are float16). Raises
  ValueError naming the keys or shapes when the weights are not those of
  ``model_name`` (a missing or unused tensor, a different depth or width).
  """
  from flax import traverse_util

  sd = _clean(state_dict)
  expected = _expected_shapes(model_name, sd)
  flat, used = {}, set()
  for rule in _rules(model_name):
    missing = [k for k in rule.torch_keys if k not in sd]
    if missing:
      raise ValueError(f"state dict lacks {_describe(missing)}: not a "
                       f"{model_name} checkpoint")
    arrays = [np.asarray(sd[k], np.float32) for k in rule.torch_keys]
    for path, value in zip(rule.flax_paths, rule.to_flax(*arrays)):
      flat[path] = value
    used.update(rule.torch_keys)
  unused = sorted(set(sd) - used)
  if unused:
    raise ValueError(f"state dict has tensors a {model_name} does not use: "
                     f"{_describe(unused)} (a larger model?)")
  wrong = [f"{'/'.join(p)} {tuple(v.shape)} vs {expected.get(p)}"
           for p, v in flat.items() if tuple(v.shape) != expected.get(p)]
  if wrong or set(flat) != set(expected):
    wrong += [f"{'/'.join(p)} missing" for p in set(expected) - set(flat)]
    raise ValueError(f"weights do not fit {model_name}: {_describe(wrong)}")
  return traverse_util.unflatten_dict(flat)


def to_open_clip_state_dict(variables: Mapping,
                            model_name: str) -> dict[str, np.ndarray]:
  """cvlg_jax variables -> an open_clip state dict (numpy; float32 weights,
  int64 ``num_batches_tracked`` = 0), loadable with ``load_state_dict``
  into ``open_clip.create_model(open_clip_model_name(model_name, act))``."""
  from flax import traverse_util

  flat = traverse_util.flatten_dict(
      {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats")})
  out, used = {}, set()
  for rule in _rules(model_name):
    missing = [p for p in rule.flax_paths if p not in flat]
    if missing:
      raise ValueError(f"variables lack {_describe(missing)}: not a "
                       f"{model_name} model")
    arrays = [np.asarray(flat[p]) for p in rule.flax_paths]
    for key, value in zip(rule.torch_keys, rule.to_torch(*arrays)):
      out[key] = value
      if key.endswith(".running_var"):
        out[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    used.update(rule.flax_paths)
  unused = sorted(set(flat) - used)
  if unused:
    raise ValueError(f"variables have {_describe(unused)}, which open_clip's "
                     "CLIP has no place for (e.g. SigLIP's logit_bias)")
  return out
