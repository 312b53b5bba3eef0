"""Evaluator on the built-in synthetic eval splits: zero-shot and retrieval.

This is what makes the offline demo show learning: zero-shot top-1 over the
(colour, shape) classes (chance = 1 / NUM_CLASSES) and retrieval recall on
held-out scenes with their clean captions.
"""

from __future__ import annotations

import numpy as np

from cvlg_jax.data import synthetic
from cvlg_jax.data.transforms import normalize
from cvlg_jax.evaluation.common import EvalContext, register
from cvlg_jax.evaluation.retrieval import retrieval_metrics
from cvlg_jax.evaluation.zeroshot import class_text_embeddings, zeroshot_accuracy


class SyntheticEvaluator:

  def __init__(self, cfg, ctx: EvalContext):
    self.ctx = ctx
    n_zs, n_ret = cfg.get("num_zeroshot", 1000), cfg.get("num_retrieval", 500)
    seed = cfg.get("seed", 0)
    zs = synthetic.SyntheticImageText("zeroshot", n_zs, ctx.image_size, seed=seed)
    ret = synthetic.SyntheticImageText("retrieval", n_ret, ctx.image_size, seed=seed)
    # Drawn once: the eval sets are fixed for the whole run.
    self.zs_images = normalize(np.stack([zs.image(i) for i in range(n_zs)]))
    self.zs_labels = np.array([zs[i]["label"] for i in range(n_zs)])
    self.ret_images = normalize(np.stack([ret.image(i) for i in range(n_ret)]))
    self.ret_tokens = ctx.tokenizer([ret.clean_caption(i) for i in range(n_ret)])

  def run(self, params) -> dict[str, float]:
    ctx = self.ctx
    class_emb = class_text_embeddings(
        ctx.encode_texts, params, ctx.tokenizer, synthetic.CLASS_NAMES,
        synthetic.ZEROSHOT_TEMPLATES, ctx.batch_size)
    image_emb = ctx.encode_images(params, self.zs_images)
    acc = zeroshot_accuracy(image_emb, class_emb, self.zs_labels, topk=(1, 5))
    out = {f"zeroshot_top{k}": float(v) for k, v in
           (("1", acc["top1"]), ("5", acc["top5"]))}
    sim = ctx.encode_images(params, self.ret_images) @ ctx.encode_texts(
        params, self.ret_tokens).T
    ret = retrieval_metrics(sim, np.arange(len(self.ret_tokens)))
    out.update({k: float(ret[k]) for k in ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5")})
    return out


@register("synthetic")
def make(cfg, ctx: EvalContext):
  return SyntheticEvaluator(cfg, ctx)
