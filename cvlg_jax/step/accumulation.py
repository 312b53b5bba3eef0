"""Loss and gradient of one global batch, in one pass or in micro-batches.

``train.grad_accum_steps`` splits the batch into micro-batches for memory
only: the contrastive loss still contrasts every pair of the global batch
(open_clip's two-pass accumulation, docs/design.md §4).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from cvlg_jax.step import sharding
from cvlg_jax.step.train_state import forward, logit_params


class Embeddings(NamedTuple):
  """This step's (student) embeddings of the batch, [N, d] each."""
  image: jax.Array
  text: jax.Array


class StepAux(NamedTuple):
  """What the gradient function returns besides the loss and gradients."""
  metrics: dict            # the loss's diagnostics (means over both directions)
  logit_scale: jax.Array
  model_state: Any         # updated non-param collections (BatchNorm), or None
  embeddings: Embeddings   # no gradient; the bank stores them for next time


def micro_split(x, micro_batches, mesh):
  """[N, ...] -> [m, N/m, ...]; micro-batch j is rows j, j+m, j+2m, ...

  Strided rather than contiguous so each micro-batch has rows on every device
  (rows are laid out device by device) and the split moves no data.
  """
  m = micro_batches
  x = jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def micro_merge(x):
  """Inverse of :func:`micro_split`: back to the original row order."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def embed_micro(model, params, model_state, micro):
  """``(Embeddings [m, N/m, d], model_state)`` of micro-batches [m, N/m, ...]
  (images, tokens[, patch noise]), embedded one at a time (running
  statistics threaded through in order)."""
  def body(ms, mb):
    img, txt, ms = forward(model, params, ms, *mb)
    return ms, Embeddings(img, txt)
  model_state, embeddings = jax.lax.scan(body, model_state, micro)
  return embeddings, model_state


def split_inputs(images, tokens, patch_noise, micro_batches, mesh):
  """The micro-batches of a step's per-row inputs (the patch noise too, so
  a micro-batch drops the patches the full batch would)."""
  rows = (images, tokens) + (() if patch_noise is None else (patch_noise,))
  return tuple(micro_split(x, micro_batches, mesh) for x in rows)


def make_grad_fn(model, loss_fn, accum_steps, mesh, lock=None):
  """``grad_fn(params, model_state, images, tokens, inputs, patch_noise=None)
  -> ((loss, StepAux), grads)``.

  ``inputs``: the :class:`losses.LossInputs`; ``patch_noise`` [N, patches]:
  which patches each row keeps (``model.patch_dropout``), None without. With ``accum_steps`` m > 1 the
  batch is processed in m micro-batches, as open_clip accumulates: pass 1
  embeds every micro-batch without gradients; the loss and the gradient of
  its own parameters (logit scale / bias) come from those cached embeddings;
  pass 2 re-embeds each micro-batch with gradients and differentiates the
  full-batch loss with only that micro-batch's rows live. The sum is the
  full-batch gradient, with activation memory of one micro-batch.
  (open_clip's version adds the logit scale's gradient m times; here it is
  counted once.) ``lock`` (params -> params) puts the frozen parameters
  (``train.freeze``) behind ``stop_gradient``: their gradients are zeros and
  nothing is differentiated that depends on them alone. BatchNorm then normalises each micro-batch with its own
  statistics, in both passes alike; the running statistics are updated once
  per micro-batch, in order, as in a PyTorch accumulation loop.
  """
  lock = lock or (lambda p: p)

  def objective(img, txt, params, inputs):
    scale, bias = logit_params(model, params)
    loss, metrics = loss_fn(img, txt, scale, inputs, bias)
    return loss, (metrics, scale)

  def full_batch(params, model_state, images, tokens, inputs, patch_noise=None):
    def f(p):
      p = lock(p)
      img, txt, new_state = forward(model, p, model_state, images, tokens,
                                    patch_noise)
      loss, (metrics, scale) = objective(img, txt, p, inputs)
      return loss, StepAux(metrics, scale, new_state,
                           jax.lax.stop_gradient(Embeddings(img, txt)))
    return jax.value_and_grad(f, has_aux=True)(params)

  if accum_steps == 1:
    return full_batch
  m = accum_steps

  def accumulated(params, model_state, images, tokens, inputs, patch_noise=None):
    micro = split_inputs(images, tokens, patch_noise, m, mesh)
    cached, new_state = embed_micro(
        model, jax.lax.stop_gradient(params), model_state, micro)
    img_c, txt_c = cached
    (loss, (metrics, scale)), grads = jax.value_and_grad(
        lambda p: objective(micro_merge(img_c), micro_merge(txt_c), lock(p),
                            inputs), has_aux=True)(params)

    def micro_grads(acc, xs):
      j, mb = xs
      def f(p):
        # Outputs equal pass 1's (same micro-batch statistics and patches).
        img_j, txt_j, _ = forward(model, lock(p), model_state, *mb)
        img = micro_merge(img_c.at[j].set(img_j))
        txt = micro_merge(txt_c.at[j].set(txt_j))
        return objective(img, txt, jax.lax.stop_gradient(p), inputs)[0]
      return jax.tree.map(jnp.add, acc, jax.grad(f)(params)), None

    grads, _ = jax.lax.scan(micro_grads, grads, (jnp.arange(m), micro))
    embeddings = Embeddings(micro_merge(img_c), micro_merge(txt_c))
    return (loss, StepAux(metrics, scale, new_state, embeddings)), grads

  return accumulated
