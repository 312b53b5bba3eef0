"""Ahead-of-time compilation of a run's programs for a device topology.

A run executes the train step (with the bank teacher: the bank read, then the
step that writes it) and the evaluators' two encode functions. This module
compiles exactly those, from the same :class:`~cvlg_jax.step.plan.RunPlan`
and the same jit definitions, for any slice (``jax.experimental.topologies``
describes a TPU slice on a host without TPUs, given ``libtpu``), with abstract
inputs only: nothing is allocated. What it reports per chip comes from the
compiler (``memory_analysis``, ``cost_analysis``, the optimized HLO), so it
is what that slice would use, not an estimate.
"""

from __future__ import annotations

import dataclasses
import math
import re
import jax
import numpy as np

from cvlg_jax.evaluation.context import encode_fns
from cvlg_jax.run import hlo_stats
from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.step.plan import RunPlan

GiB = 2 ** 30


class Chip:
  """Per-device figures of one TPU generation, as published.

  A JAX device is one TensorCore on v2/v3 (two per chip, each with half the
  chip's HBM and compute) and one megacore chip on v4/v5p; v5e/v6e chips
  have one core. ``hbm_bytes`` and ``peak_tflops`` (dense bf16) are per
  device; ``hbm_gbps`` is HBM bandwidth per device in GB/s; ``ici_gbps`` the
  chip's inter-chip bandwidth in GB/s as the source states it
  (bidirectional), None where none is published.
  """

  def __init__(self, hbm_bytes, peak_tflops, hbm_gbps, ici_gbps, source,
               megacore=False):
    self.hbm_bytes, self.peak_tflops, self.hbm_gbps = hbm_bytes, peak_tflops, hbm_gbps
    self.ici_gbps, self.source, self.megacore = ici_gbps, source, megacore


CHIPS = {
    # Jouppi et al., "A Domain-Specific Supercomputer for Training Deep Neural
    # Networks", CACM 2020, Table 3: 16 GiB HBM, 46 TFLOP/s, 700 GB/s per chip.
    "v2": Chip(8 * GiB, 23, 350, None, "Jouppi et al. CACM 2020 (per chip / 2)"),
    "v3": Chip(16 * GiB, 61.5, 450, None,
               "cloud.google.com/tpu/docs/v3: 32 GiB, 123 TFLOP/s, 900 GB/s per chip"),
    "v4": Chip(32 * GiB, 275, 1200, 269,
               "cloud.google.com/tpu/docs/v4: 32 GiB, 275 TFLOP/s, 1200 GB/s; ICI: "
               "the pod's 1.1 PB/s all-reduce bandwidth / 4096 chips", megacore=True),
    "v5e": Chip(16 * GiB, 197, 819, 400,
                "cloud.google.com/tpu/docs/v5e: 16 GiB, 197 TFLOP/s, 819 GB/s, "
                "ICI 400 GB/s"),
    "v5p": Chip(95 * GiB, 459, 2765, 1200,
                "cloud.google.com/tpu/docs/v5p: 95 GiB, 459 TFLOP/s, 2765 GB/s, "
                "ICI 1200 GB/s", megacore=True),
    "v6e": Chip(32 * 10 ** 9, 918, 1640, 800,
                "cloud.google.com/tpu/docs/v6e: 32 GB, 918 TFLOP/s, 1640 GB/s, "
                "ICI 800 GB/s"),
}


def generation(topology: str) -> str:
  name = topology.split(":")[0]
  if name not in CHIPS:
    raise ValueError(f"--topology={topology!r}: unknown TPU generation "
                     f"{name!r}; allowed: {', '.join(CHIPS)} (e.g. v5e:4x4, "
                     "v4:2x2x2, v5p:2x2x1, v6e:8x8)")
  return name


def topology_devices(topology: str, backend: str = "tpu") -> list:
  """The devices of ``topology`` (``v5e:4x4``, ...) without any TPU present,
  or for ``backend="cpu"`` this host's CPU devices (tests, no libtpu)."""
  if backend == "cpu":
    return jax.devices("cpu")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  gen = generation(topology)
  kwargs = dict(chip_config_name="megacore") if CHIPS[gen].megacore else {}
  return list(topologies.get_topology_desc(
      topology_name=topology, platform="tpu", **kwargs).devices)


@dataclasses.dataclass
class Program:
  """One compiled executable, per chip."""
  name: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int          # outputs written into donated inputs
  temp_bytes: int
  code_bytes: int
  flops: float
  bytes_accessed: float     # HBM traffic the compiler's cost model counts
  collectives: dict

  @property
  def live_bytes(self) -> int:
    """Peak of this program alone: its inputs, new outputs and scratch."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.code_bytes)


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
# XLA:TPU refuses to compile a program whose scratch exceeds the chip's HBM.
_OUT_OF_HBM = re.compile(r"HLO temporaries \(([0-9.]+)([KMGT]?)\)")


def _program(name, lowered, argument_bytes: int) -> Program:
  """Compiles ``lowered``; a program the TPU compiler refuses for lack of
  HBM is reported with the temporaries it asked for (and ``flops`` 0)."""
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError)
    found = _OUT_OF_HBM.search(str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) or not found:
      raise
    temp = int(float(found.group(1)) * _UNITS[found.group(2)])
    return Program(name, argument_bytes, 0, 0, temp, 0, 0.0, 0.0, {})
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Program(name, int(mem.argument_size_in_bytes),
                 int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes),
                 int(mem.temp_size_in_bytes),
                 int(mem.generated_code_size_in_bytes),
                 float((cost or {}).get("flops", 0.0)),
                 float((cost or {}).get("bytes accessed", 0.0)),
                 hlo_stats.collective_bytes(compiled.as_text()))


def per_chip_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def abstract_batch(plan: RunPlan, mesh) -> dict:
  """The global batch as the loop feeds it (uint8 images, ids), abstract."""
  c = plan.config
  b, s, n = c.train.batch_size, c.data.image_size, c.data.context_length
  rows = sharding.batch_sharding(mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  return dict(image=spec((b, s, s, 3), np.uint8), tokens=spec((b, n), np.int32),
              example_id=spec((b,), np.int32))


@dataclasses.dataclass
class Report:
  """What a run on ``topology`` holds and does per chip."""
  topology: str
  device_kind: str
  num_devices: int
  mesh: dict
  hbm_bytes: int | None
  parts: dict               # state parts + batch: bytes per chip (logical)
  programs: list
  resident_bytes: int       # the train state, which lives between programs

  @property
  def peak_bytes(self) -> int:
    """The largest footprint of any moment of a step: the train programs
    (their arguments include the state) and, while the state stays
    resident, the bank read and the evaluators' encoders."""
    peaks = []
    for p in self.programs:
      if p.name == "train_step":
        peaks.append(p.live_bytes)
      else:  # the state stays resident around these; their args are part of it
        peaks.append(self.resident_bytes + p.output_bytes + p.temp_bytes
                     + p.code_bytes + self.parts["batch"])
    return max(peaks)

  def _train(self):
    return [p for p in self.programs if p.name in ("train_step", "bank_read")]

  @property
  def train_flops(self) -> float:
    return sum(p.flops for p in self._train())

  @property
  def train_bytes_accessed(self) -> float:
    return sum(p.bytes_accessed for p in self._train())

  def collectives(self) -> dict:
    out = {k: 0 for k in hlo_stats.KINDS}
    for p in self._train():
      for kind, v in p.collectives.items():
        out[kind] += v["bytes"]
    return out

  def program(self, name) -> Program:
    return next(p for p in self.programs if p.name == name)

  def as_dict(self) -> dict:
    return dict(topology=self.topology, device_kind=self.device_kind,
                num_devices=self.num_devices, mesh=self.mesh,
                hbm_bytes=self.hbm_bytes, parts=self.parts,
                resident_bytes=self.resident_bytes, peak_bytes=self.peak_bytes,
                fits=self.fits, train_flops_per_chip=self.train_flops,
                train_bytes_accessed_per_chip=self.train_bytes_accessed,
                collective_bytes_per_chip=self.collectives(),
                programs=[dataclasses.asdict(p) for p in self.programs])

  @property
  def fits(self) -> bool | None:
    return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes


def state_parts(state) -> dict:
  """Per-chip bytes of each part of the (abstract) train state."""
  parts = dict(params=state.params, opt_state=state.opt_state,
               ema=state.ema_params, bank=state.bank,
               model_state=state.model_state, step_and_rng=(state.step, state.rng))
  return {k: per_chip_bytes(v) for k, v in parts.items()}


# CLIP's BPE: 256 bytes x 2 + 48,894 merges + 2 special tokens (clip_bpe.py).
CLIP_BPE_VOCAB = 49408


class _VocabOnly:
  """A tokenizer stand-in that only knows its vocabulary size: compiling
  needs the embedding table's shape, not the merges file."""

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size


def _shape_tokenizer(config):
  from cvlg_jax import fileio  # pylint: disable=import-outside-toplevel
  from cvlg_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  if config.data.tokenizer == "clip_bpe" and not fileio.exists(
      config.data.tokenizer_path):
    return _VocabOnly(CLIP_BPE_VOCAB)
  return pipeline.make_tokenizer(config)


def compile_run(plan: RunPlan, devices, *, topology: str = "cpu",
                hbm_bytes: int | None = None, evaluators: bool = True) -> Report:
  """Compiles the programs of ``plan``'s run on ``devices``; nothing runs."""
  c = plan.config
  mesh = sharding.make_mesh(c.mesh, devices)
  _, model, tx, schedule = train_state.build(plan, _shape_tokenizer(c))
  state, shardings = train_state.abstract_state(plan, model, tx, mesh)
  batch = abstract_batch(plan, mesh)
  step = train_step.make_train_step(plan, model, tx, schedule, mesh, shardings)
  inputs = per_chip_bytes(state) + per_chip_bytes(batch)
  programs = [_program(name, lowered, inputs)
              for name, lowered in step.lower(state, batch).items()]
  if evaluators:
    variables = train_state.eval_variables(state)
    enc_img, enc_txt, chunk = encode_fns(model, mesh,
                                         train_state.eval_variables(shardings),
                                         c.train.batch_size)
    rows = sharding.batch_sharding(mesh)
    s, n = c.data.image_size, c.data.context_length
    images = jax.ShapeDtypeStruct((chunk, s, s, 3), np.float32, sharding=rows)
    tokens = jax.ShapeDtypeStruct((chunk, n), np.int32, sharding=rows)
    weights = per_chip_bytes(variables)
    programs += [
        _program("encode_images", enc_img.lower(variables, images),
                 weights + per_chip_bytes(images)),
        _program("encode_texts", enc_txt.lower(variables, tokens),
                 weights + per_chip_bytes(tokens))]
  parts = state_parts(state)
  parts["batch"] = per_chip_bytes(batch)
  resident = sum(v for k, v in parts.items() if k != "batch")
  return Report(topology, devices[0].device_kind, len(devices),
                dict(zip(sharding.AXES, plan.mesh_shape)), hbm_bytes, parts,
                programs, resident)


def largest_contributors(report: Report, n: int = 3) -> list[tuple[str, int]]:
  """The biggest parts of the peak: state parts, the batch, the scratch of
  the program that peaks."""
  peak = max(report.programs, key=lambda p: p.live_bytes)
  items = dict(report.parts)
  items[f"{peak.name} temporaries"] = peak.temp_bytes
  items[f"{peak.name} new outputs"] = max(0, peak.output_bytes - peak.alias_bytes)
  return sorted(items.items(), key=lambda kv: -kv[1])[:n]


# What shrinks each contributor (docs: README "Will it fit?").
KNOBS = {
    "params": "mesh.fsdp (split params over more chips)",
    "opt_state": "mesh.fsdp (Adam moments follow their params)",
    "ema": "mesh.fsdp, or loss.psd.teacher=bank",
    "bank": "loss.psd.bank_dtype=bfloat16 or more chips",
    "batch": "a smaller train.batch_size or more chips",
    "temporaries": ("model.remat=True, train.grad_accum_steps, loss.chunk_size "
                    "(the streamed loss), a smaller train.batch_size"),
}


def fix_hint(name: str) -> str:
  for key, hint in KNOBS.items():
    if key in name:
      return hint
  return KNOBS["temporaries"]


def summary_line(report: Report) -> str:
  """One line for a program that does not fit."""
  top = ", ".join(f"{k} {v / GiB:.2f} GiB ({fix_hint(k)})"
                  for k, v in largest_contributors(report))
  return (f"does not fit: {report.peak_bytes / GiB:.2f} GiB per chip on "
          f"{report.topology} ({report.device_kind}, "
          f"{report.hbm_bytes / GiB:.3g} GiB HBM); largest: {top}")


def hbm_of(topology: str, backend: str) -> int | None:
  return None if backend == "cpu" else int(CHIPS[generation(topology)].hbm_bytes)
