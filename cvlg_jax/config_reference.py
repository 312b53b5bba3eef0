"""One line of meaning for every config key: the source of docs/config.md.

Kept beside the schema rather than parsed from its comments, so a test can
hold the two together: every key of :func:`cvlg_jax.config.base_config` has
a line here and nothing here names a key the schema lacks
(tests/test_config_reference.py), and docs/config.md is this module's
:func:`markdown` (``python scripts/config_reference.py --write``).
"""

from __future__ import annotations

import json

import ml_collections

from cvlg_jax import config as config_lib

GROUPS = {
    "model": "The two towers (cvlg_jax/models).",
    "data": "The training data and its pipeline (cvlg_jax/data).",
    "loss": "The contrastive loss and PSD's soft targets (cvlg_jax/losses).",
    "optim": "AdamW with warm-up and cosine decay (cvlg_jax/step/optim.py).",
    "mesh": "The device mesh (cvlg_jax/step/sharding.py).",
    "train": "The loop: length, batch, cadence, checkpoints (cvlg_jax/run).",
    "distributed": "Multi-process start-up and failure detection.",
    "eval": "Evaluators, by name (see below).",
}

MEANINGS = {
    "model.name": "Architecture from the registry: "
                  + ", ".join(config_lib.MODELS) + ".",
    "model.dtype": "Compute dtype of activations (params stay float32).",
    "model.remat": "Recompute each block's activations in the backward pass "
                   "(less HBM, about a third more FLOPs).",
    "model.activation": "MLP activation; released CLIP weights need quick_gelu "
                        "(OpenAI) or gelu (open_clip).",
    "model.layer_norm_epsilon": "LayerNorm epsilon; 1e-5 for released CLIP weights.",
    "model.patch_dropout": "FLIP: fraction of image patches dropped per example "
                           "in training (class token kept; ViT only; none at "
                           "evaluation). May change on resume.",
    "data.source": "Training source: synthetic, arrayrecord, tfds, "
                   "tfds_class_captions.",
    "data.tokenizer": "builtin (synthetic vocabulary), clip_bpe, sentencepiece.",
    "data.tokenizer_path": "The BPE merges file or SentencePiece model.",
    "data.vocab_size": "Vocabulary size of the builtin tokenizer.",
    "data.context_length": "Tokens per caption (padded or truncated).",
    "data.image_size": "Side of the square training image, in pixels.",
    "data.num_train": "Synthetic: examples in one epoch.",
    "data.num_heldout": "Examples of the training source never trained on, "
                        "scored by the heldout evaluator (synthetic: drawn "
                        "in addition to num_train).",
    "data.caption_noise": "Fraction of training captions made noisy "
                          "(synthetic: of data.noise_kinds; "
                          "tfds_class_captions: another class's caption).",
    "data.noise_kinds": "Synthetic: '+'-joined kinds a noisy caption draws "
                        "from (swap, partial, corrupt); partial alone: "
                        "many-to-many captions.",
    "data.data_dir": "ArrayRecord shard folder or TFDS data_dir.",
    "data.tfds_name": "TFDS builder name (tfds sources).",
    "data.tfds_split": "TFDS split to train on.",
    "data.image_key": "TFDS feature holding the image.",
    "data.caption_key": "TFDS feature holding the caption.",
    "data.crop_min_scale": "Random-resized-crop keeps at least this fraction "
                           "of the image's area.",
    "data.flip": "Random horizontal flips.",
    "data.fast_decode": "Decode JPEGs at a DCT scale near the target size, "
                        "then box-reduce (faster, near-identical pixels).",
    "data.max_aspect_ratio": "Images more elongated than this are skipped and "
                             "counted.",
    "data.worker_count": "Grain worker processes (0: in-process).",
    "data.read_threads": "Threads per process reading and decoding records.",
    "data.prefetch_buffer_size": "Batches Grain prepares ahead of the step.",
    "loss.name": "clip, psd, siglip, siglip_psd (psd: CLIP with soft "
                 "targets; siglip_psd: the same for the sigmoid loss).",
    "loss.chunk_size": "> 0: stream the logits in row blocks of this many "
                       "(memory O(chunk x batch)); 0: one matrix.",
    "loss.psd.alpha_final": "Weight of the soft targets at the end of the ramp.",
    "loss.psd.ramp_fraction": "Alpha ramps to alpha_final over this fraction "
                              "of train.steps, resolved when the run starts.",
    "loss.psd.ramp_epochs": "> 0: ramp over this many epochs instead "
                            "(resolved from the steps per epoch; a shorter "
                            "run ends below alpha_final).",
    "loss.psd.ramp_epochs_for_runs_under": "> 0: ramp_epochs applies only to "
                                          "runs shorter than this many epochs; "
                                          "longer ones use ramp_fraction.",
    "loss.psd.ramp_min_epochs": "> 0: the ramp of ramp_fraction or "
                                "ramp_epochs lasts at least this many epochs.",
    "loss.psd.ramp_steps": "> 0: ramp over this many steps instead (before "
                           "ramp_epochs); -1: use ramp_epochs or ramp_fraction.",
    "loss.psd.ramp_unit": "step (alpha moves every step) or epoch (once per epoch).",
    "loss.psd.subset": "random (distil a random subset of rows) or all (every row).",
    "loss.psd.subset_fraction": "Fraction of rows that get soft targets "
                                "(subset=random).",
    "loss.psd.teacher_temperature": "Divides the teacher's logits before the "
                                    "softmax (> 1: softer targets).",
    "loss.psd.teacher": "self (the same pass), ema (an EMA copy of the "
                        "params) or bank (each example's embeddings when "
                        "last seen).",
    "loss.psd.ema_decay": "EMA teacher: decay per step.",
    "loss.psd.ema_horizon_epochs": "> 0: the EMA averages over this many "
                                   "epochs instead (decay resolved from the "
                                   "steps per epoch).",
    "loss.psd.bank_dtype": "Bank teacher: storage dtype of the embeddings.",
    "loss.psd.bank_max_gib": "Bank teacher: refuse to start when one device's "
                             "share of the bank exceeds this many GiB.",
    "optim.learning_rate": "Peak learning rate.",
    "optim.warmup_steps": "Linear warm-up steps.",
    "optim.warmup_fraction": "> 0: warm up over this fraction of train.steps "
                             "instead (resolved when the run starts).",
    "optim.min_lr_ratio": "The cosine decays to learning_rate x this.",
    "optim.weight_decay": "AdamW weight decay, on matrices and embeddings "
                          "only (not biases, norms or the temperature).",
    "optim.b1": "Adam beta1.",
    "optim.b2": "Adam beta2.",
    "optim.eps": "Adam epsilon.",
    "optim.grad_clip_norm": "Clip the global gradient norm to this (0: off).",
    "mesh.data": "Devices on the data axis (-1: all the others).",
    "mesh.fsdp": "Devices params and optimizer state are sharded over.",
    "train.steps": "Optimizer steps in the run.",
    "train.batch_size": "Global batch (pairs per step, over all devices).",
    "train.seed": "Seed of init, data order, crops and PSD's subset.",
    "train.grad_accum_steps": "> 1: split the batch into this many "
                              "micro-batches; the loss still contrasts the "
                              "whole batch.",
    "train.log_every": "Steps between metric rows.",
    "train.eval_every": "Steps between evaluations (an evaluator's own "
                        "`every` wins).",
    "train.eval_every_epochs": "> 0: evaluate every this many epochs instead "
                               "(resolved from the steps per epoch).",
    "train.checkpoint_every": "Steps between checkpoints.",
    "train.keep_checkpoints": "Checkpoints kept (oldest deleted first).",
    "train.init_from": "A checkpoint step dir or workdir whose params and "
                       "model state start this run.",
    "train.freeze": "LiT: locked parameters, comma-separated shortcuts (image, "
                    "text, image_except_last=N) or regexes over paths like "
                    "image_tower/encoder/block0/attn/query/kernel: no optimizer "
                    "state, no backward pass, bitwise unchanged.",
    "train.init_from_params": "Which params train.init_from loads (train.freeze "
                              "syntax; \"\" = all), e.g. image: the rest keep "
                              "their fresh init.",
    "train.skip_nonfinite_steps": "0: a NaN/Inf loss or gradient stops the "
                                  "run; N > 0: skip up to N such updates.",
    "distributed.initialization_timeout_s": "How long processes wait for "
                                            "each other at start-up.",
    "distributed.heartbeat_timeout_s": "A process whose peer is silent this "
                                       "long is ended.",
    "distributed.shutdown_timeout_s": "How long processes wait for each "
                                      "other at exit.",
}

EVALUATORS = {
    "synthetic": "Zero-shot accuracy and retrieval on fresh synthetic scenes "
                 "(num_zeroshot, num_retrieval, seed).",
    "zeroshot": "Zero-shot top-1/top-5 with prompt ensembles (dataset, split, "
                "data_dir, max_examples, seed).",
    "retrieval": "Image-text recall@1/5/10 both ways (dataset, split, "
                 "data_dir, captions_per_image, max_examples, seed).",
    "linear_probe": "Logistic regression on frozen image features (dataset, "
                    "train_split, split, data_dir, max_train_examples, "
                    "max_examples, val_fraction, max_iters, seed).",
    "memorisation": "Does the model recall the noisy captions it was trained "
                    "on (num_examples, seed).",
    "heldout": "Retrieval on the training source's held-out pairs "
               "(data.num_heldout; num_examples).",
}


def leaves(group: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
  """``(dotted key, default)`` of every schema leaf, in schema order."""
  out = []
  for key in group.keys():
    path, value = f"{prefix}{key}", group[key]
    if path == "eval":
      continue  # free-form evaluator entries: tabled by type instead
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(leaves(value, path + "."))
    else:
      out.append((path, value))
  return out


def markdown() -> str:
  """docs/config.md: every key with its default and meaning, by group."""
  from cvlg_jax.evaluation.common import registered_types
  schema = config_lib.base_config()
  lines = ["# Config reference", "",
           "<!-- Generated by `python scripts/config_reference.py --write` from "
           "cvlg_jax/config.py and cvlg_jax/config_reference.py; a test fails "
           "when it is stale. -->", "",
           "Every config file starts from `cvlg_jax.config.base_config()` and may "
           "only set these keys; `--config.<key>=<value>` overrides one on the "
           "command line, and `python -m cvlg_jax.main --config=... --print_config` "
           "prints the result without running. Step counts given as fractions "
           "or epochs are resolved when the run starts and recorded in "
           "`run_info.json`.", ""]
  by_group: dict[str, list] = {}
  for key, default in leaves(schema):
    by_group.setdefault(key.split(".")[0], []).append((key, default))
  for group in (g for g in GROUPS if g in by_group):
    rows = by_group[group]
    lines += [f"## `{group}`", "", GROUPS[group], "",
              "| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | `{json.dumps(default)}` | {MEANINGS[key]} |"
              for key, default in rows]
    lines.append("")
  lines += ["## `eval`", "", GROUPS["eval"] + " Each entry is a group with a "
            "`type` and, optionally, `every` (steps between its runs; default "
            "`train.eval_every`) and the type's own keys:", "",
            "| type | what it measures (its keys) |", "|---|---|"]
  lines += [f"| `{t}` | {EVALUATORS[t]} |" for t in registered_types()]
  return "\n".join(lines) + "\n"
