"""Released-CLIP weights: outputs equal open_clip's, conversions are exact.

open_clip models are built with random weights (no download); the BatchNorm
layers of RN50 get random statistics and affine terms so they are not an
identity. Needs the interop extra (requirements-interop.txt); skipped without.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from cvlg_jax.models import pretrained, registry  # noqa: E402
from open_clip_fixtures import open_clip_bpe, randomize_batch_norm  # noqa: E402

PARITY_TOL = 1e-4  # max abs, float32, normalised embeddings
CAPTIONS = ["a photo of a cat.", "Two dogs playing in the snow!!",
            "naÃ¯ve café &amp; résumé 2023", "x " * 100]  # the last truncates


def _open_clip_model(name, seed=0):
  torch.manual_seed(seed)
  model = open_clip.create_model(name, pretrained=None).eval()
  randomize_batch_norm(model, seed)
  return model


def _inputs(model, oc_name, image_size=224):
  images = np.random.default_rng(0).standard_normal(
      (2, image_size, image_size, 3)).astype(np.float32)
  tokens = open_clip.get_tokenizer(oc_name)(CAPTIONS[:2]).numpy()
  return images, tokens


_CACHE = {}


@pytest.fixture
def vit_b32():
  """The parity test's ViT-B/32 (built again if that test did not run)."""
  if "vit_b32" not in _CACHE:
    model = _open_clip_model("ViT-B-32-quickgelu")
    _CACHE["vit_b32"] = (model, pretrained.from_open_clip_state_dict(
        model.state_dict(), "vit_b32"))
  model, variables = _CACHE["vit_b32"]
  return model, variables, _inputs(model, "ViT-B-32-quickgelu")[1]


def _max_errors(name, oc_name, activation):
  """(image, text, |scale diff|) of cvlg_jax vs open_clip on the same inputs."""
  model = _open_clip_model(oc_name)
  images, tokens = _inputs(model, oc_name)
  with torch.no_grad():
    ref_img, ref_txt, ref_scale = model(
        torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(tokens))
  variables = pretrained.from_open_clip_state_dict(model.state_dict(), name)
  ours = registry.build_model(name, vocab_size=49408, activation=activation,
                              layer_norm_epsilon=1e-5)
  img, txt, scale = jax.jit(ours.apply)(variables, images, tokens.astype(np.int32))
  if name == "vit_b32":
    _CACHE[name] = (model, variables)
  return (float(np.abs(np.asarray(img) - ref_img.numpy()).max()),
          float(np.abs(np.asarray(txt) - ref_txt.numpy()).max()),
          abs(float(scale) - float(ref_scale)), model, variables)


@pytest.mark.parametrize("name,oc_name,activation", [
    ("vit_b32", "ViT-B-32-quickgelu", "quick_gelu"),  # OpenAI's release
    ("rn50", "RN50-quickgelu", "quick_gelu"),         # OpenAI's release
    ("vit_b16", "ViT-B-16", "gelu"),                  # open_clip (LAION) config
])
def test_embeddings_equal_open_clip(name, oc_name, activation):
  img_err, txt_err, scale_err, model, variables = _max_errors(
      name, oc_name, activation)
  print(f"{name} ({oc_name}): image max abs {img_err:.2e}, text {txt_err:.2e}")
  assert img_err <= PARITY_TOL and txt_err <= PARITY_TOL
  assert scale_err < 1e-5
  # And the round trip returns every tensor of the state dict exactly.
  sd = model.state_dict()
  back = pretrained.to_open_clip_state_dict(variables, name)
  assert sorted(back) == sorted(sd)
  for key, value in sd.items():
    assert back[key].dtype == value.numpy().dtype, key
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()})


def _shape_only_state_dict(oc_name):
  """State dict of zero-stride arrays with the model's shapes (no memory)."""
  model = open_clip.create_model(oc_name, pretrained=None, device="meta")
  return {k: np.broadcast_to(np.float32(0) if v.is_floating_point() else
                             np.int64(0), tuple(v.shape))
          for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,oc_name", [("vit_l14", "ViT-L-14-quickgelu"),
                                          ("vit_b16", "ViT-B-16-quickgelu")])
def test_large_layouts_convert_both_ways(name, oc_name):
  sd = _shape_only_state_dict(oc_name)
  variables = pretrained.from_open_clip_state_dict(sd, name)  # checks shapes
  count = sum(v.size for v in jax.tree.leaves(variables["params"]))
  assert count == {"vit_l14": 427_616_513, "vit_b16": 149_620_737}[name]
  assert pretrained.input_sizes(sd, name) == dict(
      image_size=224, context_length=77, vocab_size=49408)
  back = pretrained.to_open_clip_state_dict(variables, name)
  assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}


def test_wrong_model_or_missing_tensors_are_named():
  sd = _shape_only_state_dict("ViT-B-32")
  with pytest.raises(ValueError, match=r"patch_embed/kernel \(32, 32, 3, 768\) "
                     r"vs \(16, 16, 3, 768\)"):
    pretrained.from_open_clip_state_dict(sd, "vit_b16")
  with pytest.raises(ValueError, match="not a rn50 CLIP"):
    pretrained.from_open_clip_state_dict(sd, "rn50")
  partial = dict(sd)
  del partial["visual.transformer.resblocks.3.attn.in_proj_weight"]
  with pytest.raises(ValueError, match="resblocks.3.attn.in_proj_weight"):
    pretrained.from_open_clip_state_dict(partial, "vit_b32")
  extra = dict(sd, **{"visual.transformer.resblocks.12.ln_1.weight": sd["visual.ln_pre.weight"]})
  with pytest.raises(ValueError, match="does not use: visual.transformer.resblocks.12"):
    pretrained.from_open_clip_state_dict(extra, "vit_b32")
  with pytest.raises(ValueError, match="pools by averaging"):
    pretrained.from_open_clip_state_dict(sd, "tiny")


def test_wrappers_and_half_precision_are_accepted():
  # DDP's "module." prefix, OpenAI's int metadata entries, float16 weights.
  model = _open_clip_model("RN50-quickgelu")
  sd = model.state_dict()
  wrapped = {"module." + k: v.half() if v.is_floating_point() else v
             for k, v in sd.items()}
  wrapped.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
  variables = pretrained.from_open_clip_state_dict(wrapped, "rn50")
  kernel = variables["params"]["text_proj"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, sd["text_projection"].half().float().numpy())
  assert "batch_stats" in variables


def test_wrong_activation_is_detected(vit_b32):
  """The parity test can fail: the other GELU moves embeddings by > 1e-4."""
  model, variables, tokens = vit_b32
  with torch.no_grad():
    ref = model.encode_text(torch.from_numpy(tokens), normalize=True).numpy()
  ours = registry.build_model("vit_b32", vocab_size=49408, activation="gelu",
                              layer_norm_epsilon=1e-5)
  txt = jax.jit(lambda v, t: ours.apply(v, tokens=t)[1])(
      variables, tokens.astype(np.int32))
  assert float(np.abs(np.asarray(txt) - ref).max()) > 10 * PARITY_TOL


def test_open_clip_names():
  assert pretrained.open_clip_model_name("vit_b32") == "ViT-B-32-quickgelu"
  assert pretrained.open_clip_model_name("vit_l14", "gelu") == "ViT-L-14"
  with pytest.raises(ValueError, match="no open_clip counterpart"):
    pretrained.open_clip_model_name("demo")


def test_clip_bpe_tokenizer_matches_open_clip():
  from cvlg_jax.data.tokenizers import get_tokenizer
  path = open_clip_bpe()
  ours = get_tokenizer("clip_bpe", context_length=77, path=path)
  assert ours.vocab_size == 49408
  # Not compared: a literal "<|endoftext|>" in a caption, which OpenAI's
  # tokenizer (and ours) reads as the special token and open_clip's as text.
  texts = CAPTIONS + ["It's 2023!! café \U0001F642", "  Hello\n\tWORLD  ",
                      "über-naïve, coöperate; 3.14159", "日本語のテキスト", ""]
  np.testing.assert_array_equal(ours(texts), open_clip.tokenize(texts).numpy())


@pytest.mark.parametrize("height,width", [(224, 224), (300, 400), (333, 250),
                                          (225, 512), (97, 140)])
def test_eval_preprocessing_matches_open_clip(height, width):
  """Same pixels as open_clip's eval transform (sizes rounded as torchvision)."""
  from PIL import Image
  from cvlg_jax.data.transforms import eval_preprocess
  image = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
  ref = open_clip.image_transform(224, is_train=False)(Image.fromarray(image))
  np.testing.assert_allclose(eval_preprocess(image, 224),
                             ref.numpy().transpose(1, 2, 0), atol=1e-6)
