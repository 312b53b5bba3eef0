"""Evaluators that look at the training data: memorisation and held-out pairs.

``memorisation``: how many of the *noisy* training pairs the model has learned
by heart. For a sample of trained examples whose caption is wrong (the
source knows which: ``noise_kind``), each image is scored against a gallery
of every sampled wrong caption and every sampled correct description
(``clean_captions``); the pair counts as memorised when the image's top-1
is its own wrong caption. A model that generalises picks a correct
description instead (``clean_top1``); chance is 1 / gallery size. This is the
label-noise memorisation measure (Arpit et al. 2017; Zhang et al. 2017) for
image-text pairs, and what progressive self-distillation is meant to lower.

``heldout``: the ``data.num_heldout`` examples of the training source that the
pipeline never trains on (a fixed pseudo-random subset), with their captions as they are (noise
included). ``i2t_top1``: the image's top-1 among the distinct held-out
captions is its own caption; ``t2i_top1``: the caption's top-1 held-out image
carries that caption. A validation set drawn like the training data, so knobs
can be chosen without looking at the evaluation sets.

Both read the source through ``EvalContext.train_data``; images get the
evaluation transform (no augmentation). An example whose image does not
decode (a bad file in a ``folder:`` set) is left out when the evaluator is
built, with one warning; the metrics are over the other examples
(``num_examples``) and report the left-out ones as ``num_skipped``.
"""

from __future__ import annotations

import numpy as np

from cvlg_jax.data import decode
from cvlg_jax.data.transforms import normalize
from cvlg_jax.evaluation.common import EvalContext, register
from cvlg_jax.evaluation.datasets import Skipped, read_good
from cvlg_jax.evaluation.zeroshot import _l2_normalize


def _train_data(ctx: EvalContext, kind: str):
  if ctx.train_data is None:
    raise ValueError(f"eval type {kind!r} needs the run's training data "
                     "(EvalContext.train_data; the trainer and the eval CLI "
                     "provide it)")
  return ctx.train_data()


def _read(source, indices, image_size, skipped: Skipped):
  """(indices kept, their records, float32 [n, S, S, 3] images) of the
  examples whose image decodes; the others are counted in ``skipped``."""
  def read(i):
    record = source[i]
    if isinstance(record, decode.Rejection):
      return record
    return record, decode.preprocess_image(record["image"], None, train=False,
                                           image_size=image_size)

  kept = list(read_good(read, indices, skipped))
  skipped.report(len(indices))
  images = np.zeros((0, image_size, image_size, 3), np.uint8)
  if kept:
    images = np.stack([image for _, (_, image) in kept])
  return (np.array([i for i, _ in kept], np.int64),
          [record for _, (record, _) in kept], normalize(images))


def _embed_caption_sets(ctx, params, caption_sets) -> np.ndarray:
  """One embedding per set of captions: the renormalised mean of its
  captions' embeddings (prompt ensembling, as in zero-shot)."""
  flat = [c for captions in caption_sets for c in captions]
  emb = [np.asarray(ctx.encode_texts(params, ctx.tokenizer(flat[s:s + ctx.batch_size])))
         for s in range(0, len(flat), ctx.batch_size)]
  emb = _l2_normalize(np.concatenate(emb).astype(np.float32))
  out, start = [], 0
  for captions in caption_sets:
    out.append(emb[start:start + len(captions)].mean(0))
    start += len(captions)
  return _l2_normalize(np.stack(out))


class MemorisationEvaluator:

  def __init__(self, cfg, ctx: EvalContext):
    self.ctx = ctx
    data = _train_data(ctx, "memorisation")
    source = data.source
    if not (hasattr(source, "noise_kind") and hasattr(source, "clean_captions")):
      raise ValueError(f"eval type 'memorisation' needs a training source that "
                       f"knows its caption noise (synthetic, class captions), "
                       f"not {type(source).__name__}")
    noisy = np.array([i for i in data.trained_indices() if source.noise_kind(int(i))],
                     np.int64)
    rng = np.random.default_rng(cfg.get("seed", 0))
    count = min(cfg.get("num_examples", 500), len(noisy))
    self.indices = np.sort(rng.choice(noisy, count, replace=False)) if count else noisy
    self.skipped = Skipped("memorisation eval (noisy training pairs)")
    if count:
      self.indices, records, self.images = _read(source, self.indices,
                                                 ctx.image_size, self.skipped)
    self.kinds = np.array([source.noise_kind(int(i)) for i in self.indices])
    if not len(self.indices):
      return
    wrong = [tuple(decode.caption_candidates(r["caption"])) for r in records]
    clean = [tuple(source.clean_captions(int(i))) for i in self.indices]
    self.gallery = sorted(set(wrong) | set(clean))
    where = {captions: k for k, captions in enumerate(self.gallery)}
    self.wrong = np.array([where[c] for c in wrong])
    self.clean = np.array([where[c] for c in clean])

  def run(self, params) -> dict[str, float]:
    if not len(self.indices):
      return {"num_examples": 0.0, **self.skipped.metrics()}
    ctx = self.ctx
    text = _embed_caption_sets(ctx, params, self.gallery)
    top1 = np.argmax(ctx.encode_images(params, self.images) @ text.T, axis=1)
    out = {"memorised": float(np.mean(top1 == self.wrong)),
           "clean_top1": float(np.mean(top1 == self.clean)),
           "chance": 1.0 / len(self.gallery),
           "num_examples": float(len(self.indices)), **self.skipped.metrics()}
    kinds = sorted(set(self.kinds))
    if len(kinds) > 1:
      for kind in kinds:
        out[f"memorised_{kind}"] = float(np.mean((top1 == self.wrong)[self.kinds == kind]))
    return out


class HeldoutEvaluator:

  def __init__(self, cfg, ctx: EvalContext):
    self.ctx = ctx
    data = _train_data(ctx, "heldout")
    source, indices = data.source, data.heldout
    if not len(indices):
      raise ValueError("eval type 'heldout' needs data.num_heldout > 0 (the "
                       "held-out part of the training source)")
    indices = indices[:cfg.get("num_examples", len(indices))]
    self.skipped = Skipped("heldout eval")
    _, records, self.images = _read(source, indices, ctx.image_size, self.skipped)
    captions = [decode.caption_candidates(r["caption"])[0] for r in records]
    self.distinct = sorted(set(captions))
    where = {c: k for k, c in enumerate(self.distinct)}
    self.caption_of = np.array([where[c] for c in captions])
    self.tokens = ctx.tokenizer(self.distinct) if self.distinct else None

  def run(self, params) -> dict[str, float]:
    ctx = self.ctx
    if not len(self.caption_of):  # every held-out image failed to decode
      return {"num_examples": 0.0, **self.skipped.metrics()}
    sim = ctx.encode_images(params, self.images) @ np.asarray(
        ctx.encode_texts(params, self.tokens)).T   # [images, distinct captions]
    i2t = np.mean(np.argmax(sim, axis=1) == self.caption_of)
    # Each image's caption, and the caption of its top-1 image for that text.
    t2i = np.mean(self.caption_of[np.argmax(sim[:, self.caption_of], axis=0)]
                  == self.caption_of)
    return {"i2t_top1": float(i2t), "t2i_top1": float(t2i),
            "mean_top1": float((i2t + t2i) / 2),
            "num_examples": float(len(self.caption_of)),
            **self.skipped.metrics()}


@register("memorisation", reads_train_data=True)
def make_memorisation(cfg, ctx: EvalContext) -> MemorisationEvaluator:
  return MemorisationEvaluator(cfg, ctx)


@register("heldout", reads_train_data=True)
def make_heldout(cfg, ctx: EvalContext) -> HeldoutEvaluator:
  return HeldoutEvaluator(cfg, ctx)
