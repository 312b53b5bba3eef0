"""The trained model as evaluators see it: two encode functions.

Evaluators never touch meshes, shardings or Flax modules; the trainer and the
eval CLI build this context once per run and pass the model's variables to
each evaluation.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from cvlg_jax.step import sharding
from cvlg_jax.evaluation import common


def encode_fns(model, mesh, variable_shardings, batch_size):
  """``(encode_images, encode_texts, chunk)``: the jitted encoders evaluators
  run (rows over every device, outputs replicated so every host reads them
  whole), and the batch size they are fed in (ahead-of-time compilation
  lowers these same functions: cvlg_jax/run/aot.py)."""
  rows, devices = sharding.batch_sharding(mesh), mesh.size
  chunk = max(devices, batch_size // devices * devices)
  enc_img = jax.jit(lambda v, x: model.apply(v, images=x)[0],
                    in_shardings=(variable_shardings, rows),
                    out_shardings=sharding.replicated(mesh))
  enc_txt = jax.jit(lambda v, t: model.apply(v, tokens=t)[1],
                    in_shardings=(variable_shardings, rows),
                    out_shardings=sharding.replicated(mesh))
  return enc_img, enc_txt, chunk


def make_eval_context(model, mesh, variable_shardings, tokenizer, image_size,
                      batch_size, train_data=None) -> common.EvalContext:
  """Sharded encode functions that accept any batch size (padded inside).

  They take the model's variables (``train_step.eval_variables(state)``:
  params plus BatchNorm running statistics) and run it in inference mode.
  With the run's opened ``train_data`` (``pipeline.TrainData``: the run
  plan's), evaluators can also read its training examples.
  """
  rows, devices = sharding.batch_sharding(mesh), mesh.size
  enc_img, enc_txt, chunk = encode_fns(model, mesh, variable_shardings,
                                       batch_size)

  def batched(fn, params, x):
    out = []
    for start in range(0, len(x), chunk):
      part = np.asarray(x[start:start + chunk])
      pad = -len(part) % devices
      if pad:
        part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(fn(params, jax.device_put(part, rows)))[:len(part) - pad])
    return np.concatenate(out)

  return common.EvalContext(
      encode_images=functools.partial(batched, enc_img),
      encode_texts=functools.partial(batched, enc_txt),
      tokenizer=tokenizer, image_size=image_size, batch_size=chunk,
      train_data=None if train_data is None else (lambda: train_data))
