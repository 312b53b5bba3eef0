"""The trained model as evaluators see it: two encode functions.

Evaluators never touch meshes, shardings or Flax modules; the trainer and the
eval CLI build this context once per run and pass the model's variables to
each evaluation.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from cvlg_jax import sharding
from cvlg_jax.data import pipeline
from cvlg_jax.evaluation import common


def make_eval_context(model, mesh, variable_shardings, tokenizer, image_size,
                      batch_size, config=None) -> common.EvalContext:
  """Sharded encode functions that accept any batch size (padded inside).

  They take the model's variables (``train_step.eval_variables(state)``:
  params plus BatchNorm running statistics) and run it in inference mode.
  With the run's ``config``, evaluators can also read its training data.
  """
  rows, devices = sharding.batch_sharding(mesh), mesh.size
  chunk = max(devices, batch_size // devices * devices)
  # Outputs replicated: with several processes every host reads them whole.
  enc_img = jax.jit(lambda v, x: model.apply(v, images=x)[0],
                    in_shardings=(variable_shardings, rows),
                    out_shardings=sharding.replicated(mesh))
  enc_txt = jax.jit(lambda v, t: model.apply(v, tokens=t)[1],
                    in_shardings=(variable_shardings, rows),
                    out_shardings=sharding.replicated(mesh))

  def batched(fn, params, x):
    out = []
    for start in range(0, len(x), chunk):
      part = np.asarray(x[start:start + chunk])
      pad = -len(part) % devices
      if pad:
        part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(fn(params, jax.device_put(part, rows)))[:len(part) - pad])
    return np.concatenate(out)

  train_data = None if config is None else (lambda: pipeline.train_data(config))

  return common.EvalContext(
      encode_images=functools.partial(batched, enc_img),
      encode_texts=functools.partial(batched, enc_txt),
      tokenizer=tokenizer, image_size=image_size, batch_size=chunk,
      train_data=train_data)
