"""The config schema (every knob and its default) and its validation.

Every config file starts from :func:`base_config` and overrides values; it
may not add keys. :func:`validate` runs before anything is compiled and turns
each mistake into one line naming the key and what is allowed.
"""

from __future__ import annotations

import ml_collections

from cvlg_jax import fileio, losses
from cvlg_jax.step import bank, freeze as freeze_lib
from cvlg_jax.data import synthetic, train_sources
from cvlg_jax.data.tokenizers import TOKENIZERS
from cvlg_jax.evaluation.common import registered_types
from cvlg_jax.models.registry import ACTIVATIONS, DTYPES, MODELS, VISION_TOWERS

# self: the student's own logits (same pass); ema: an EMA copy of the params
# (one more forward pass); bank: each example's embeddings from the last time
# it was seen (cvlg_jax/step/bank.py; memory, no FLOPs). docs/design.md, "Teachers".
PSD_TEACHERS = ("self", "ema", "bank")
PSD_SUBSETS = ("random", "all")
RAMP_UNITS = ("step", "epoch")


class ConfigError(ValueError):
  """A config mistake, reported before JAX compiles anything."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # activation / layer_norm_epsilon: released CLIP weights need quick_gelu
  # (OpenAI) or gelu (open_clip) and 1e-5; see models/pretrained.py.
  # patch_dropout: FLIP's fraction of image patches dropped per example in
  # training (ViT towers only; none at evaluation).
  c.model = dict(name="tiny", dtype="float32", remat=False,
                 activation="gelu_tanh", layer_norm_epsilon=1e-6,
                 patch_dropout=0.0)

  c.data = dict(
      source="synthetic",
      tokenizer="builtin",       # builtin | clip_bpe | sentencepiece
      tokenizer_path="",         # merges file / SentencePiece model
      vocab_size=4096,           # builtin tokenizer only
      context_length=32,
      image_size=32,
      num_train=20_000,          # synthetic: size of one epoch
      # num_heldout examples of the training source (a fixed pseudo-random
      # subset; synthetic: drawn in addition to num_train) are never trained
      # on; the "heldout" evaluator scores them, to choose knobs by.
      num_heldout=0,
      caption_noise=0.0,         # synthetic / tfds_class_captions: noisy fraction
      # synthetic: the kinds a noisy caption draws from ("partial" alone:
      # many-to-many captions, true but naming only part of the scene).
      noise_kinds="swap+partial+corrupt",
      data_dir="",               # arrayrecord shards / TFDS data_dir
      tfds_name="", tfds_split="train",
      image_key="image", caption_key="caption",  # TFDS feature names
      crop_min_scale=0.9,        # random-resized-crop scale range [min, 1]
      flip=False,                # random horizontal flip (real data)
      fast_decode=True,          # JPEG DCT-scale decode + box-reduce (decode.py)
      max_aspect_ratio=10.0,     # images more elongated are skipped
      worker_count=0,            # Grain worker processes (0 = in-process)
      # Threads per process reading + decoding records. Grain's default (16)
      # costs ~20% more CPU per example through GIL contention when records
      # are local; raise it for high-latency stores (GCS) if workers idle.
      read_threads=2,
      prefetch_buffer_size=2,
  )

  c.loss = dict(
      name="psd",
      chunk_size=0,
      psd=dict(
          alpha_final=0.5,
          # alpha reaches alpha_final after ramp_fraction x train.steps (resolved
          # when the run starts, so a train.steps override rescales it);
          # ramp_epochs > 0 ramps over that many epochs instead (resolved from
          # the steps per epoch: a shorter run ends below alpha_final);
          # ramp_steps > 0 fixes the count.
          ramp_fraction=1.0,
          ramp_epochs=0.0,
          # > 0: the ramp (from either) lasts at least this many epochs, so
          # a short run never trusts a bank written by a model of one epoch.
          ramp_min_epochs=0.0,
          # > 0: ramp_epochs applies only to runs shorter than this many
          # epochs; longer runs ramp over ramp_fraction (a rule by length).
          ramp_epochs_for_runs_under=0.0,
          ramp_steps=-1,
          ramp_unit="step",       # step | epoch
          subset="random",        # random | all
          subset_fraction=0.5,
          teacher_temperature=1.0,
          teacher="self",         # self | ema | bank
          ema_decay=0.999,
          # > 0: the EMA averages over this many epochs instead, decay =
          # 1 - 1 / (epochs x steps per epoch), resolved when the run starts.
          ema_horizon_epochs=0.0,
          bank_dtype="bfloat16",  # bank: storage dtype of the embeddings
          # bank: refuse to start when each device's share of the bank
          # (examples / devices x 2 x embed_dim x bytes) exceeds this.
          bank_max_gib=4.0,
      ),
  )

  c.optim = dict(
      # warmup_fraction > 0: warm up over that fraction of train.steps
      # (resolved when the run starts) instead of warmup_steps.
      learning_rate=5e-4, warmup_steps=100, warmup_fraction=0.0, min_lr_ratio=0.0,
      weight_decay=0.2, b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0,
  )

  c.mesh = dict(data=-1, fsdp=1)

  c.train = dict(
      steps=1000, batch_size=256, seed=0,
      # k > 1: embed k micro-batches without grads, then redo each with grads;
      # the loss still contrasts the full batch (train_step.py).
      grad_accum_steps=1,
      log_every=50, eval_every=250, checkpoint_every=250,
      # > 0: evaluate every this many epochs (resolved with the run's steps
      # per epoch) instead of every eval_every steps.
      eval_every_epochs=0.0,
      keep_checkpoints=3,
      # A checkpoint (step dir or workdir; cvlg_jax or `cvlg_jax.pretrained
      # import`) whose params and model state start a new run (init_from.py).
      init_from="",
      # Which params init_from loads ("" = all; the train.freeze syntax):
      # e.g. "image" for LiT's locked image tower and a text tower from scratch.
      init_from_params="",
      # Locked parameters (LiT): comma-separated shortcuts (image, text,
      # image_except_last=N) or regexes over parameter paths (step/freeze.py).
      freeze="",
      # NaN/Inf in the loss or gradients stops the run (nothing is saved from
      # the bad step on); N > 0 instead skips up to N such updates in total.
      skip_nonfinite_steps=0,
  )

  # Multi-process runs (cvlg_jax/run/distributed.py); JAX's defaults. A process
  # whose peer died is ended by JAX about heartbeat_timeout_s later.
  c.distributed = dict(initialization_timeout_s=300, heartbeat_timeout_s=100,
                       shutdown_timeout_s=300)

  # name -> evaluator entry; each has at least `type` (see evaluation.common).
  c.eval = ml_collections.ConfigDict()
  return c


def _type_ok(value, default) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):  # an int where a float is expected is fine
    return isinstance(value, (int, float))
  return isinstance(value, type(default))


def _check_keys(config, schema, prefix=""):
  missing = sorted(set(schema.keys()) - set(config.keys()))
  if missing:
    raise ConfigError(f"config.{prefix}{missing[0]}: missing (was the group "
                      "replaced? start from base_config() and set values)")
  for key in config.keys():
    path = f"{prefix}{key}"
    if path == "eval" or path.startswith("eval."):
      continue  # evaluator entries are free-form; checked by their builders
    if key not in schema:
      allowed = ", ".join(sorted(schema.keys()))
      raise ConfigError(f"config.{path}: unknown key; allowed here: {allowed}")
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config.{path}: must be a group, got {value!r}")
      _check_keys(value, default, path + ".")
    elif default is not None and value is not None:
      if not _type_ok(value, default):
        raise ConfigError(f"config.{path}: expected {type(default).__name__}, "
                          f"got {type(value).__name__} {value!r}")


def _choice(value, allowed, path):
  if value not in allowed:
    raise ConfigError(f"config.{path}={value!r} is not allowed; "
                      f"allowed: {', '.join(map(str, allowed))}")


def _in_range(value, lo, hi, path):
  if not lo <= value <= hi:
    raise ConfigError(f"config.{path}={value} must be in [{lo}, {hi}]")


def _value(config, path):
  for key in path.split("."):
    config = config[key]
  return config


def _positive(config, *paths):
  for path in paths:
    if _value(config, path) <= 0:
      raise ConfigError(f"config.{path}={_value(config, path)} must be > 0")


def _non_negative(config, *paths):
  for path in paths:
    if _value(config, path) < 0:
      raise ConfigError(f"config.{path}={_value(config, path)} must be >= 0")


def _check_model(config, paths: bool) -> None:
  model = config.model
  _choice(model.name, tuple(MODELS), "model.name")
  _choice(model.dtype, tuple(DTYPES), "model.dtype")
  _choice(model.activation, tuple(ACTIVATIONS), "model.activation")
  if not 0 <= model.patch_dropout < 1:
    raise ConfigError(f"config.model.patch_dropout={model.patch_dropout} must "
                      "be in [0, 1)")
  if model.patch_dropout and VISION_TOWERS[MODELS[model.name]["image"]][
      "kind"] != "vit":
    raise ConfigError(f"config.model.patch_dropout needs a ViT image tower; "
                      f"model.name={model.name!r} has a ResNet")
  if not 0 < model.layer_norm_epsilon < 1:
    raise ConfigError(f"config.model.layer_norm_epsilon="
                      f"{model.layer_norm_epsilon} must be in (0, 1)")


def _check_loss(config, paths: bool) -> None:
  _choice(config.loss.name, tuple(losses.LOSS_NAMES), "loss.name")
  psd = config.loss.psd
  _in_range(psd.alpha_final, 0.0, 1.0, "loss.psd.alpha_final")
  _in_range(psd.subset_fraction, 0.0, 1.0, "loss.psd.subset_fraction")
  _in_range(psd.ema_decay, 0.0, 1.0, "loss.psd.ema_decay")
  _choice(psd.teacher, PSD_TEACHERS, "loss.psd.teacher")
  _choice(psd.bank_dtype, tuple(bank.DTYPES), "loss.psd.bank_dtype")
  _choice(psd.subset, PSD_SUBSETS, "loss.psd.subset")
  _choice(psd.ramp_unit, RAMP_UNITS, "loss.psd.ramp_unit")
  _positive(config, "loss.psd.bank_max_gib", "loss.psd.teacher_temperature")
  if not 0 < psd.ramp_fraction <= 1:
    raise ConfigError(f"config.loss.psd.ramp_fraction={psd.ramp_fraction} must "
                      "be in (0, 1]")
  _non_negative(config, "loss.psd.ema_horizon_epochs", "loss.psd.ramp_epochs",
                "loss.psd.ramp_min_epochs", "loss.psd.ramp_epochs_for_runs_under")
  if psd.ramp_steps == 0 or psd.ramp_steps < -1:
    raise ConfigError(f"config.loss.psd.ramp_steps={psd.ramp_steps} must be "
                      "> 0, or -1 for ramp_fraction of the training steps")
  _non_negative(config, "loss.chunk_size")


def _check_data(config, paths: bool) -> None:
  data = config.data
  _choice(data.source, tuple(train_sources.SOURCES), "data.source")
  if paths:
    try:
      train_sources.SOURCES[data.source].check(config)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  _choice(data.tokenizer, tuple(TOKENIZERS), "data.tokenizer")
  if (paths and data.tokenizer != "builtin"
      and not fileio.exists(data.tokenizer_path)):
    raise ConfigError(f"config.data.tokenizer_path={data.tokenizer_path!r} does "
                      f"not exist (needed by data.tokenizer={data.tokenizer!r})")
  _in_range(data.caption_noise, 0.0, 1.0, "data.caption_noise")
  _check_noise_kinds(data)
  _in_range(data.crop_min_scale, 0.01, 1.0, "data.crop_min_scale")
  _positive(config, "data.image_size", "data.context_length", "data.num_train")
  _non_negative(config, "data.num_heldout", "data.worker_count",
                "data.read_threads")


def _check_noise_kinds(data) -> None:
  try:
    kinds = synthetic.parse_noise_kinds(data.noise_kinds)
  except ValueError as e:
    raise ConfigError(f"config.data.noise_kinds={data.noise_kinds!r}: {e}"
                      ) from None
  if data.source != "synthetic" and set(kinds) != set(synthetic.NOISE_KINDS):
    raise ConfigError(
        f"config.data.noise_kinds={data.noise_kinds!r}: only the synthetic "
        f"source draws noise kinds (data.source={data.source!r} has one: "
        "wrong captions); leave the default")


def _check_optim(config, paths: bool) -> None:
  _positive(config, "optim.learning_rate")
  _non_negative(config, "optim.warmup_steps")
  _in_range(config.optim.warmup_fraction, 0.0, 1.0, "optim.warmup_fraction")


def _check_train(config, paths: bool) -> None:
  train = config.train
  _positive(config, "train.steps", "train.batch_size", "train.log_every",
            "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints")
  accum = train.grad_accum_steps
  if accum < 1 or train.batch_size % accum:
    raise ConfigError(f"config.train.grad_accum_steps={accum} must be >= 1 and "
                      f"divide train.batch_size={train.batch_size}")
  if paths and train.init_from and not fileio.exists(train.init_from):
    raise ConfigError(f"config.train.init_from={train.init_from!r} does "
                      "not exist (a checkpoint step directory or a workdir)")
  for key in ("freeze", "init_from_params"):
    try:
      freeze_lib.check_syntax(train[key], f"train.{key}")
    except freeze_lib.FreezeSpecError as e:
      raise ConfigError(str(e)) from None
  if train.init_from_params and not train.init_from:
    raise ConfigError("config.train.init_from_params is set but "
                      "train.init_from is empty")
  if train.skip_nonfinite_steps < 0:
    raise ConfigError(f"config.train.skip_nonfinite_steps="
                      f"{train.skip_nonfinite_steps} must be >= 0 (0 = off)")


def _check_distributed(config, paths: bool) -> None:
  _positive(config, "distributed.initialization_timeout_s",
            "distributed.heartbeat_timeout_s", "distributed.shutdown_timeout_s")


def _check_eval(config, paths: bool) -> None:
  types = registered_types() if config.eval else ()
  for name, entry in config.eval.items():
    if not isinstance(entry, ml_collections.ConfigDict) or "type" not in entry:
      raise ConfigError(f"config.eval.{name} must be a group with a 'type' key")
    _choice(entry.type, types, f"eval.{name}.type")


# Each group's checks, in the order a reader meets the groups in the schema.
_GROUP_CHECKS = (_check_model, _check_data, _check_loss, _check_optim,
                 _check_train, _check_distributed, _check_eval)


def validate(config, *, paths: bool = True) -> None:
  """Raises :class:`ConfigError` with one clear line for the first problem.

  Checks the config on its own; what depends on the devices or the data (the
  mesh, batch splits, the bank's size) is checked once by
  ``cvlg_jax.step.plan.make_plan``, which a run builds next. ``paths=False``
  skips the checks that the data, vocabulary and init_from paths exist on
  this host (ahead-of-time compilation reads none of them).
  """
  _check_keys(config, base_config())
  for check in _GROUP_CHECKS:
    check(config, paths)
