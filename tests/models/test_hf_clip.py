"""Hugging Face CLIPModel directories in and out (models/hf_clip.py).

Parity is against ``transformers.CLIPModel`` with random weights (every
parameter perturbed, so no bias is zero and no LayerNorm an identity): three
small configs of the registered ``bench_s32`` towers at 64 px, context 16,
vocabulary 1000 (one per activation and EOS convention), and the real
ViT-B/32 and ViT-B/16 shapes. Token rows are ``[SOT, ..., EOT, 0, ...]``
with EOT the largest id: what cvlg_jax's tokenizers produce (the real
shapes use its clip_bpe tokenizer when open_clip ships the merges file);
HF's own tokenizer pads with EOT instead, which cvlg_jax does not pool.
The directory round trip needs only safetensors, the config checks
nothing; the rest skip without torch / transformers
(requirements-interop.txt).
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from cvlg_jax.models import hf_clip, pretrained, registry

PARITY_TOL = 1e-4  # max abs, float32, normalised embeddings
SMALL = dict(image_size=64, context_length=16, vocab_size=1000)
SHAPES = {  # name -> (registry name, hidden_act, layer_norm_eps, legacy eos)
    "small_quick_gelu_legacy_eos": ("bench_s32", "quick_gelu", 1e-5, True),
    "small_gelu": ("bench_s32", "gelu", 1e-5, False),
    "small_gelu_tanh_eps1e-6": ("bench_s32", "gelu_pytorch_tanh", 1e-6, False),
    "vit_b32": ("vit_b32", "quick_gelu", 1e-5, True),
    "vit_b16": ("vit_b16", "gelu", 1e-5, False),
}
CAPTIONS = ["a photo of a cat.", "Two dogs playing in the snow!!",
            "naïve café & résumé 2023", "x " * 100]  # the last truncates


def _synthetic_tokens(context, vocab, rows=4, seed=0):
  """CLIP-like rows: SOT=vocab-2, ids in [1, vocab-3], EOT=vocab-1, 0 pad;
  one row fills the context (EOT last), one is empty text."""
  rng = np.random.default_rng(seed)
  out = np.zeros((rows, context), np.int32)
  for r, n in enumerate([context - 2, 0] + list(rng.integers(1, context - 2, rows - 2))):
    out[r, :n + 2] = [vocab - 2, *rng.integers(1, vocab - 2, n), vocab - 1]
  return out


def _tokens(context, vocab):
  try:
    import open_clip
    merges = os.path.join(os.path.dirname(open_clip.__file__),
                          "bpe_simple_vocab_16e6.txt.gz")
  except ImportError:
    merges = ""
  if vocab != 49408 or not os.path.exists(merges):
    return _synthetic_tokens(context, vocab)
  from cvlg_jax.data.tokenizers import get_tokenizer
  return np.asarray(get_tokenizer("clip_bpe", context_length=context,
                                  path=merges)(CAPTIONS), np.int32)


def _hf_config(shape):
  name, act, eps, legacy = SHAPES[shape]
  sizes = SMALL if name == "bench_s32" else {}
  cfg = hf_clip.hf_config_for(
      name, {"activation": hf_clip.ACTIVATIONS[act], "layer_norm_epsilon": eps},
      **sizes)
  cfg["vision_config"]["hidden_act"] = cfg["text_config"]["hidden_act"] = act
  if legacy:
    cfg["text_config"]["eos_token_id"] = hf_clip.LEGACY_EOS_TOKEN_ID
  return cfg


def _apply(variables, overrides, images, tokens):
  model = registry.build_model(
      overrides["model.name"], vocab_size=overrides["data.vocab_size"],
      activation=overrides["model.activation"],
      layer_norm_epsilon=overrides["model.layer_norm_epsilon"])
  img, txt, _ = jax.jit(model.apply)(variables, images, tokens)
  return (None if img is None else np.asarray(img)), np.asarray(txt)


# ---------------------------------------------------------------- no torch


def _random_variables(name, sizes, seed=0):
  """Random float32 params of a registered model (shapes only, no init)."""
  import jax.numpy as jnp
  model = registry.build_model(name, vocab_size=sizes["vocab_size"])
  s = sizes["image_size"]
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, sizes["context_length"]), jnp.int32)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: rng.standard_normal(x.shape).astype(np.float32), dict(shapes))


def test_directory_round_trip_needs_no_torch(tmp_path, monkeypatch):
  pytest.importorskip("safetensors")
  for blocked in ("torch", "transformers"):
    monkeypatch.setitem(sys.modules, blocked, None)  # importing them fails
  variables = _random_variables("bench_s32", SMALL)
  model = {"activation": "gelu_tanh", "layer_norm_epsilon": 1e-6}
  out = hf_clip.save_hf_dir(variables, "bench_s32", model, str(tmp_path / "hf"))
  assert hf_clip.is_hf_dir(out) and not hf_clip.is_hf_dir(str(tmp_path))
  back, name, overrides = hf_clip.load_hf_dir(out)
  assert name == "bench_s32" and overrides == {
      "model.name": "bench_s32", "model.activation": "gelu_tanh",
      "model.layer_norm_epsilon": 1e-6, "data.image_size": 64,
      "data.context_length": 16, "data.vocab_size": 1000}
  jax.tree.map(np.testing.assert_array_equal, back, variables)
  # position_ids buffers (transformers < 4.31) are accepted and not needed.
  cfg = json.load(open(os.path.join(out, "config.json")))
  tensors = hf_clip.read_hf_tensors(out)
  with_ids = dict(tensors, **{
      "text_model.embeddings.position_ids": np.arange(16)[None],
      "vision_model.embeddings.position_ids": np.arange(5)[None]})
  jax.tree.map(np.testing.assert_array_equal,
               hf_clip.from_hf_state_dict(with_ids, cfg), variables)
  # Sharded save_pretrained output (model.safetensors.index.json).
  from safetensors.numpy import save_file
  shard = tmp_path / "sharded"
  shard.mkdir()
  keys = sorted(tensors)
  weight_map = {}
  for i, part in enumerate((keys[:10], keys[10:])):
    fname = f"model-0000{i + 1}-of-00002.safetensors"
    save_file({k: tensors[k] for k in part}, str(shard / fname))
    weight_map.update({k: fname for k in part})
  (shard / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": weight_map}))
  (shard / "config.json").write_text(json.dumps(cfg))
  jax.tree.map(np.testing.assert_array_equal, hf_clip.load_hf_dir(str(shard))[0],
               variables)
  # pytorch_model.bin alone needs torch, and says so in one line.
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
  assert hf_clip.is_hf_dir(str(tmp_path / "bin"))
  with pytest.raises(ValueError, match=r"pytorch_model.bin but no "
                     r"model.safetensors: reading it needs torch"):
    hf_clip.load_hf_dir(str(tmp_path / "bin"))


def test_missing_or_extra_tensors_are_named():
  cfg = hf_clip.hf_config_for("bench_s32", {"activation": "gelu",
                                            "layer_norm_epsilon": 1e-5}, **SMALL)
  sd = hf_clip.to_hf_state_dict(_random_variables("bench_s32", SMALL), cfg)
  partial = {k: v for k, v in sd.items()
             if k != "vision_model.encoder.layers.3.self_attn.k_proj.bias"}
  with pytest.raises(ValueError, match=r"lack vision_model.encoder.layers.3."
                     r"self_attn.k_proj.bias: not the bench_s32"):
    hf_clip.from_hf_state_dict(partial, cfg)
  extra = dict(sd, **{"text_model.encoder.layers.6.layer_norm1.bias": sd["logit_scale"]})
  with pytest.raises(ValueError, match="does not use: text_model.encoder.layers.6"):
    hf_clip.from_hf_state_dict(extra, cfg)
  bigger = json.loads(json.dumps(cfg))
  bigger["vision_config"]["image_size"] = 96
  with pytest.raises(ValueError, match="gives image_size=96 but the weights are for 64"):
    hf_clip.from_hf_state_dict(sd, bigger)


def _cfg(**changes):
  """vit_b32's config.json with ``vision_config.x=...`` style changes."""
  cfg = hf_clip.hf_config_for("vit_b32", {"activation": "quick_gelu",
                                          "layer_norm_epsilon": 1e-5})
  for key, value in changes.items():
    tower, _, field = key.rpartition("__")
    (cfg[tower] if tower else cfg)[field] = value
  return cfg


@pytest.mark.parametrize("changes,message", [
    (dict(vision_config__hidden_size=1280, vision_config__intermediate_size=5120),
     r"^vision_config.hidden_size=1280 matches no registered cvlg_jax model with "
     r"patch_size=32; allowed: 384, 768$"),
    (dict(vision_config__num_hidden_layers=24),
     r"^vision_config.num_hidden_layers=24 matches no .*; allowed: 12$"),
    (dict(vision_config__patch_size=8),
     r"^vision_config.patch_size=8 matches no registered cvlg_jax model; "
     r"allowed: 14, 16, 32$"),
    (dict(projection_dim=768), r"^projection_dim=768 matches no .*allowed: 512$"),
    (dict(text_config__hidden_act="relu", vision_config__hidden_act="relu"),
     r"^vision_config.hidden_act='relu' is not supported; allowed: quick_gelu, "
     r"gelu, gelu_pytorch_tanh, gelu_new$"),
    (dict(text_config__hidden_act="gelu"),
     r"^text_config.hidden_act='gelu' differs from vision_config.hidden_act="
     r"'quick_gelu'; cvlg_jax has one model.activation"),
    (dict(text_config__layer_norm_eps=1e-6), r"^text_config.layer_norm_eps=1e-06 "
     r"differs from vision_config.layer_norm_eps=1e-05"),
    (dict(text_config__intermediate_size=3072), r"^text_config.intermediate_size="
     r"3072: cvlg_jax's MLPs are 4 x hidden_size; allowed: 2048$"),
    (dict(text_config__eos_token_id=0), r"^text_config.eos_token_id=0: .*allowed: "
     r"2 \(argmax\), 49407$"),
    (dict(vision_config__image_size=[224, 336]), r"^vision_config.image_size="
     r"\[224, 336\]: cvlg_jax ViTs are square"),
    (dict(vision_config__image_size=200), r"^vision_config.image_size=200 is not "
     r"a multiple of vision_config.patch_size=32$"),
    (dict(vision_config__num_channels=1), r"^vision_config.num_channels=1; allowed: 3$"),
    (dict(model_type="siglip", architectures=["SiglipModel"]),
     r"^config.json has model_type='siglip'.*allowed: model_type='clip'"),
])
def test_configs_the_towers_cannot_express_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    hf_clip.model_from_hf_config(_cfg(**changes))


def test_configs_map_to_registered_models():
  assert hf_clip.model_from_hf_config({"model_type": "clip"}) == ("vit_b32", {
      "model.name": "vit_b32", "model.activation": "quick_gelu",
      "model.layer_norm_epsilon": 1e-5, "data.image_size": 224,
      "data.context_length": 77, "data.vocab_size": 49408})
  # OpenAI's hub ViT-L/14-336 layout: *_config_dict entries, legacy eos id.
  name, ov = hf_clip.model_from_hf_config({
      "architectures": ["CLIPModel"], "projection_dim": 768,
      "text_config_dict": dict(hidden_size=768, intermediate_size=3072,
                               num_attention_heads=12, eos_token_id=2),
      "vision_config_dict": dict(hidden_size=1024, intermediate_size=4096,
                                 num_hidden_layers=24, num_attention_heads=16,
                                 image_size=336, patch_size=14)})
  assert (name, ov["data.image_size"]) == ("vit_l14", 336)
  assert hf_clip.SUPPORTED == ("vit_s16", "vit_b32", "vit_b16", "vit_l14",
                               "bench_s32")
  for bad, message in (("rn50", "no transformers CLIPModel layout"),
                       ("tiny", "allowed: vit_s16, vit_b32")):
    with pytest.raises(ValueError, match=message):
      hf_clip.hf_config_for(bad, {"activation": "gelu", "layer_norm_epsilon": 1e-5})


# ------------------------------------------------------------ transformers


@pytest.fixture(scope="module")
def transformers():
  pytest.importorskip("torch")
  return pytest.importorskip("transformers")


def test_defaults_are_transformers_defaults(transformers):
  text, vision = transformers.CLIPTextConfig(), transformers.CLIPVisionConfig()
  top = transformers.CLIPConfig()
  for obj, defaults in ((text, hf_clip.TEXT_DEFAULTS),
                        (vision, hf_clip.VISION_DEFAULTS), (top, hf_clip.TOP_DEFAULTS)):
    assert {k: getattr(obj, k) for k in defaults} == defaults


@pytest.fixture(scope="module", params=list(SHAPES))
def case(request, transformers):
  """One random CLIPModel per shape, its tensors, inputs and outputs."""
  import torch
  shape = request.param
  cfg = _hf_config(shape)
  torch.manual_seed(0)
  model = transformers.CLIPModel(transformers.CLIPConfig.from_dict(cfg)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  cfg = json.loads(model.config.to_json_string())  # what save_pretrained writes
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  name, overrides = hf_clip.model_from_hf_config(cfg)
  size, context = overrides["data.image_size"], overrides["data.context_length"]
  images = np.random.default_rng(1).standard_normal(
      (len(CAPTIONS), size, size, 3)).astype(np.float32)
  tokens = _tokens(context, overrides["data.vocab_size"])
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(),
                pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  return dict(shape=shape, model=model, cfg=cfg, sd=sd, name=name,
              overrides=overrides, images=images, tokens=tokens,
              ref=(out.image_embeds.numpy(), out.text_embeds.numpy()),
              variables=hf_clip.from_hf_state_dict(sd, cfg))


def test_embeddings_equal_transformers(case):
  img, txt = _apply(case["variables"], case["overrides"], case["images"],
                    case["tokens"])
  img_err = float(np.abs(img - case["ref"][0]).max())
  txt_err = float(np.abs(txt - case["ref"][1]).max())
  print(f"{case['shape']}: image max abs {img_err:.2e}, text {txt_err:.2e}")
  assert img_err <= PARITY_TOL and txt_err <= PARITY_TOL
  assert np.isclose(case["variables"]["params"]["logit_scale"],
                    case["sd"]["logit_scale"])
  if case["shape"] == "vit_b32":  # the bound can fail: exact GELU misses it
    wrong = dict(case["overrides"], **{"model.activation": "gelu"})
    _, txt = _apply(case["variables"], wrong, None, case["tokens"])
    assert float(np.abs(txt - case["ref"][1]).max()) > 10 * PARITY_TOL


def test_round_trip_is_bitwise(case):
  back = hf_clip.to_hf_state_dict(case["variables"], case["cfg"])
  assert sorted(back) == sorted(case["sd"])  # 5.x saves no position_ids
  for key, value in case["sd"].items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_export_loads_in_transformers(case, tmp_path, transformers):
  if case["shape"] == "vit_b16":
    pytest.skip("vit_b32 covers the real size; saves time")
  import torch
  ov = case["overrides"]
  out = hf_clip.save_hf_dir(
      case["variables"], case["name"], {"activation": ov["model.activation"],
                                        "layer_norm_epsilon": ov["model.layer_norm_epsilon"]},
      str(tmp_path / "hf"))
  model, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys",
                                   "mismatched_keys", "error_msgs")), info
  for key, value in model.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), case["sd"][key], err_msg=key)
  assert model.config.text_config.hidden_act == case["model"].config.text_config.hidden_act
  with torch.no_grad():
    got = model.eval()(input_ids=torch.from_numpy(case["tokens"]).long(),
                       pixel_values=torch.from_numpy(case["images"].transpose(0, 3, 1, 2)))
  np.testing.assert_array_equal(got.image_embeds.numpy(), case["ref"][0])
  np.testing.assert_array_equal(got.text_embeds.numpy(), case["ref"][1])


def test_hf_weights_run_in_open_clip(case):
  """HF dir -> cvlg_jax -> open_clip state dict (import, then export): open_clip
  has no converter of its own for transformers' CLIP, so compare outputs."""
  if case["shape"] != "vit_b32":
    pytest.skip("open_clip has configs for the real sizes only")
  import torch
  open_clip = pytest.importorskip("open_clip")
  sd = pretrained.to_open_clip_state_dict(case["variables"], "vit_b32")
  oc_name = pretrained.open_clip_model_name("vit_b32",
                                            case["overrides"]["model.activation"])
  model = open_clip.create_model(oc_name, pretrained=None).eval()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(case["images"].transpose(0, 3, 1, 2)),
                             normalize=True).numpy()
    txt = model.encode_text(torch.from_numpy(case["tokens"]).long(),
                            normalize=True).numpy()
  assert float(np.abs(img - case["ref"][0]).max()) <= PARITY_TOL
  assert float(np.abs(txt - case["ref"][1]).max()) <= PARITY_TOL
