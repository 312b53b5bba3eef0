"""Per-device temporary memory of the contrastive loss + its gradient, dense vs
streamed (``loss.chunk_size``), as XLA plans it for the sharded program; and
the memory of the embedding-bank teacher.

    python benchmarks/loss_memory.py
    python benchmarks/loss_memory.py --batch_sizes=4096,8192,16384 --loss=siglip_psd

Nothing runs: each variant is lowered and compiled for the 8-device CPU mesh
and ``compiled.memory_analysis().temp_size_in_bytes`` is read (the same on
any backend that reports it). Inputs are [N, d] L2-normalised embeddings
sharded over the devices; the gradient is w.r.t. both embeddings and the
logit scale (and bias for SigLIP). Dense holds n x N logits per device
(n = N / devices); streamed holds n x chunk, plus O(n d) ring buffers.

The bank (``loss.psd.teacher=bank``) holds one row per training example:
its size per device for the paper's data sets is the formula of
``cvlg_jax.step.bank.bytes_per_device``; the compiled read + write of one step on
a CC3M-sized bank shows what it costs on top (``--bank_examples``): the
bank's buffers are arguments updated in place (donated), and the step's
temporaries are O(batch x d), not O(bank).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from cvlg_jax.step import bank, sharding  # noqa: E402
from cvlg_jax import losses

LOSSES = {"clip": ("softmax", False), "psd": ("softmax", True),
          "siglip": ("sigmoid", False), "siglip_psd": ("sigmoid", True)}
MiB = 2 ** 20


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch_sizes", default="1024,2048,4096")
  p.add_argument("--embed_dim", type=int, default=512)
  p.add_argument("--chunk_size", type=int, default=128)
  p.add_argument("--loss", default="psd", choices=tuple(LOSSES))
  p.add_argument("--teacher", default="self", choices=("self", "ema"))
  p.add_argument("--data", type=int, default=-1, help="mesh.data (-1: all)")
  p.add_argument("--fsdp", type=int, default=1)
  p.add_argument("--bank_examples", type=int, default=3_300_000,
                 help="bank rows for the compiled read + write (CC3M)")
  p.add_argument("--bank_batch", type=int, default=4096)
  return p.parse_args(argv)


# Training-set sizes of the paper's pre-training data.
DATASETS = (("CC3M", 3_300_000), ("CC12M", 12_000_000), ("YFCC15M", 15_000_000))
GiB = 2 ** 30


def bank_step_bytes(mesh, num_examples, dim, batch, dtype="bfloat16"):
  """Per-device bytes of one step's bank work, compiled as the train step
  runs it (cvlg_jax.step.train_step): the read on its own, then the write with the
  bank donated. Returns (read temporaries, write's new buffers + temporaries,
  and the same for read and write compiled as one program)."""
  rows = sharding.batch_sharding(mesh)
  abstract = jax.eval_shape(lambda: bank.zeros(num_examples, dim, dtype, mesh.size))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=rows), abstract)
  ids = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
  emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)

  def extra(fn, *args, donate=()):
    m = jax.jit(fn, donate_argnums=donate).lower(*args).compile().memory_analysis()
    return m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes

  read = extra(lambda b, i: bank.lookup(b, i, mesh), abstract, ids)
  write = extra(lambda b, i, x, y: bank.update(b, i, x, y, 1, mesh),
                abstract, ids, emb, emb, donate=(0,))
  fused = extra(lambda b, i, x, y: (bank.update(b, i, x, y, 1, mesh),
                                    bank.lookup(b, i, mesh)),
                abstract, ids, emb, emb, donate=(0,))
  return read, write, fused


def report_bank(args, mesh):
  d, devices = args.embed_dim, mesh.size
  print(f"\nembedding bank, d={d}: per device over {devices} devices (total)")
  for dtype in ("bfloat16", "float32"):
    cells = []
    for name, n in DATASETS:
      per = bank.bytes_per_device(n, d, dtype, devices)
      cells.append(f"{name} {per / GiB:.2f} GiB ({per * devices / GiB:.1f})")
    print(f"  {dtype:9s} " + "   ".join(cells))
  read, write, fused = bank_step_bytes(mesh, args.bank_examples, d, args.bank_batch)
  size = bank.bytes_per_device(args.bank_examples, d, "bfloat16", devices)
  mib = lambda b: f"{b / 2 ** 20:.2f} MiB"  # noqa: E731
  print(f"  one step, {args.bank_examples} rows, batch {args.bank_batch}, bf16: "
        f"bank share {size / GiB:.3f} GiB/device; beyond it, per device: read "
        f"{mib(read)}, write {mib(write)} (as the train step runs them); read + "
        f"write in one program {mib(fused)}")
  ratio = (read + write) / size
  print(f"  step memory beyond the bank / bank share: {ratio:.4f} (in place: "
        f"{'yes' if ratio < 0.05 else 'NO'}; in one program: "
        f"{fused / size:.3f})")


def temp_bytes(mesh, loss, n, d, chunk, ema):
  kind, distill = LOSSES[loss]
  fn = losses.sharded_contrastive_loss(mesh, kind=kind, chunk_size=chunk,
                                       distill=distill, unit_temperature=True)
  rows = sharding.batch_sharding(mesh)
  emb = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=rows)
  mask = jax.ShapeDtypeStruct((n,), jnp.bool_, sharding=rows)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)

  def f(u, v, s, b, mask, teacher_emb):
    teacher = None if teacher_emb is None else losses.Teacher(
        *teacher_emb, jnp.float32(10.0))
    return fn(u, v, s, losses.LossInputs(jnp.float32(0.5), mask, 1.0, teacher),
              b if kind == "sigmoid" else None)[0]

  grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
  compiled = grad.lower(emb, emb, scalar, scalar, mask,
                        (emb, emb) if ema else None).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main(argv=None):
  args = parse_args(argv)
  mesh = sharding.make_mesh(ConfigDict(dict(data=args.data, fsdp=args.fsdp)))
  sizes = [int(s) for s in args.batch_sizes.split(",")]
  devices = mesh.size
  print(f"loss={args.loss} teacher={args.teacher} d={args.embed_dim} "
        f"chunk_size={args.chunk_size} mesh={dict(mesh.shape)} "
        f"devices={devices}x{jax.devices()[0].device_kind}")
  print(f"{'global N':>9s} {'local n':>8s} {'dense MiB':>10s} {'streamed MiB':>13s} "
        f"{'streamed/dense':>15s}")
  rows = []
  for n in sizes:
    dense = temp_bytes(mesh, args.loss, n, args.embed_dim, 0, args.teacher == "ema")
    streamed = temp_bytes(mesh, args.loss, n, args.embed_dim, args.chunk_size,
                          args.teacher == "ema")
    rows.append((n, dense, streamed))
    print(f"{n:9d} {n // devices:8d} {dense / MiB:10.2f} {streamed / MiB:13.2f} "
          f"{streamed / dense:15.3f}", flush=True)
  print("\ngrowth when the global batch grows (linear = the batch ratio):")
  for (n0, d0, s0), (n1, d1, s1) in zip(rows, rows[1:]):
    print(f"  N {n0} -> {n1} (x{n1 / n0:g}): dense x{d1 / d0:.2f}, "
          f"streamed x{s1 / s0:.2f}")
  n, dense, streamed = rows[-1]
  ratio = streamed / dense
  print(f"\nstreamed / dense at N={n}: {ratio:.3f} (target <= 0.25: "
        f"{'met' if ratio <= 0.25 else 'MISSED'})")
  growth = max(s1 / s0 / (n1 / n0) for (n0, _, s0), (n1, _, s1)
               in zip(rows, rows[1:])) if len(rows) > 1 else float("nan")
  print(f"streamed growth / batch growth, worst step: {growth:.2f} (linear "
        f"target <= ~1.1: {'met' if growth <= 1.1 else 'MISSED'})")
  report_bank(args, mesh)


if __name__ == "__main__":
  main()
