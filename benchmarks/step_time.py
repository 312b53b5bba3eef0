"""PSD (each teacher) vs CLIP train-step time, the streamed (chunked) loss
vs the dense one, and what a locked image tower (LiT, ``train.freeze=image``)
and FLIP's patch dropout (``model.patch_dropout``) save.

    python benchmarks/step_time.py                # tiny model, 8 CPU devices
    python benchmarks/step_time.py --model=vit_b32 --image_size=224 \\
        --context_length=77 --batch_size=1024 --dtype=bfloat16
    # LiT at equal towers (the tiny ViT and text tower: 16 tokens, 2 x 64 each)
    python benchmarks/step_time.py --only=lock_image
    # FLIP on a ViT whose image tower dominates, as in FLIP's models
    python benchmarks/step_time.py --only=patch_dropout --model=demo --image_size=64

All variants share the model, the batch, the mesh and the initial params;
only ``loss.name`` ("clip": plain InfoNCE, no teacher work; "psd": soft
targets), ``loss.psd.teacher`` (self: the same forward pass; ema: one more
forward pass of an EMA copy; bank: a per-example embedding bank of
``--bank_examples`` rows, read and written every step) and
``loss.chunk_size`` differ (and ``train.freeze`` / ``model.patch_dropout``
in the ``lock_image`` / ``patch_dropout`` variants, against CLIP). They are
timed in interleaved rounds, so drifting load on a shared machine hits every
variant alike, and the median step times are compared. The loss alone
(forward + backward on random embeddings of the same global batch) is timed
the same way: it bounds what PSD can cost once the towers are cheap relative
to the loss (huge batches, small towers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from cvlg_jax import config as config_lib, losses  # noqa: E402
from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.step.plan import make_plan


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="tiny")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--context_length", type=int, default=16)
  p.add_argument("--chunk_size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=15)
  p.add_argument("--steps", type=int, default=2, help="steps per timed round")
  p.add_argument("--fsdp", type=int, default=1)
  p.add_argument("--loss_embed_dim", type=int, default=512,
                 help="embedding size for the loss-only timing")
  p.add_argument("--bank_examples", type=int, default=100_000,
                 help="data set size (bank rows) for the bank teacher")
  p.add_argument("--patch_dropout", type=float, default=0.5)
  p.add_argument("--only", choices=("", "lock_image", "patch_dropout"), default="",
                 help="time only CLIP and this variant of it")
  return p.parse_args(argv)


def make_config(args, loss, chunk, teacher="self", variant=""):
  c = config_lib.base_config()
  c.model.name, c.model.dtype = args.model, args.dtype
  c.data.image_size, c.data.context_length = args.image_size, args.context_length
  c.data.num_train = args.bank_examples
  c.loss.name, c.loss.chunk_size = loss, chunk
  c.loss.psd.teacher = teacher
  c.train.batch_size = args.batch_size
  c.mesh.data, c.mesh.fsdp = -1, args.fsdp
  if variant == "lock_image":
    c.train.freeze = "image"
  elif variant == "patch_dropout":
    c.model.patch_dropout = args.patch_dropout
  config_lib.validate(c)
  return c


def random_batch(config, vocab_size, seed=0):
  """uint8 images and end-padded token rows, as the pipeline delivers them."""
  rng = np.random.default_rng(seed)
  b, s, n = config.train.batch_size, config.data.image_size, config.data.context_length
  tokens = rng.integers(1, vocab_size, size=(b, n), dtype=np.int32)
  lengths = rng.integers(2, n + 1, size=(b, 1))
  tokens = np.where(np.arange(n) < lengths, tokens, 0).astype(np.int32)
  images = rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8)
  ids = rng.permutation(config.data.num_train)[:b].astype(np.int32)
  return dict(image=images, tokens=tokens, example_id=ids)


def interleaved(runners, rounds, steps):
  """Seconds per call of each ``runners[v] = [fn, carry]`` (fn maps carry ->
  carry, blocked on after each round): wall-clock and process CPU time. On a
  CPU backend shared with other jobs, CPU time is the load-robust measure
  (waiting for a core costs wall time, not CPU time)."""
  names = list(runners)
  wall, cpu = {v: [] for v in names}, {v: [] for v in names}
  for r in range(rounds):
    for v in names[r % len(names):] + names[:r % len(names)]:
      fn, carry = runners[v]
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(steps):
        carry = fn(carry)
      jax.block_until_ready(carry)
      wall[v].append((time.perf_counter() - t0) / steps)
      cpu[v].append((time.process_time() - c0) / steps)
      runners[v][1] = carry
  return wall, cpu


def step_runners(args, variants):
  """Compiled steps of every (loss, chunk, teacher) variant, all starting
  from the same params (teacher state: EMA copy = params, empty bank)."""
  runners, params, batch, mesh = {}, None, None, None
  for loss, chunk, teacher, variant in variants:
    config = make_config(args, loss, chunk, teacher, variant)
    plan = make_plan(config, jax.device_count())
    tokenizer, model, tx, schedule = train_state.build(plan)
    if mesh is None:
      mesh = sharding.make_mesh(config.mesh)
      batch = sharding.shard_batch(random_batch(config, tokenizer.vocab_size), mesh)
    state, shardings = train_state.init_state(plan, model, tx, mesh)
    if params is None:
      params = jax.device_get(state.params)  # steps donate their state
    state = state.replace(params=jax.device_put(params, shardings.params))
    step = train_step.make_train_step(plan, model, tx, schedule, mesh,
                                      shardings)
    t0 = time.perf_counter()
    first = jax.block_until_ready(step(state, batch))  # compiles
    print(f"compiled step loss={loss} chunk_size={chunk} teacher={teacher} "
          f"{variant} (+ 1 step) in {time.perf_counter() - t0:.1f}s", flush=True)
    runners[(loss, chunk, teacher, variant)] = [
        lambda c, step=step: step(c[0], batch), first]
  return runners, mesh


def loss_runners(args, variants, mesh):
  n, d = args.batch_size, args.loss_embed_dim
  rows = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  emb = lambda: jax.device_put(  # noqa: E731
      (rng.normal(size=(n, d)) / np.sqrt(d)).astype(np.float32), rows)
  u, v = emb(), emb()
  mask = jax.device_put(np.arange(n) % 2 == 0, rows)
  runners = {}
  for loss, chunk, teacher, variant in variants:
    if teacher != "self" or variant:  # the loss alone is the same for these
      continue
    fn = losses.sharded_contrastive_loss(mesh, chunk_size=chunk,
                                         distill=loss == "psd",
                                         unit_temperature=True)
    f = lambda u, v, s, fn=fn: fn(  # noqa: E731
        u, v, s, losses.LossInputs(jnp.float32(0.5), mask, 1.0))[0]
    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    runners[(loss, chunk, teacher, variant)] = [
        lambda c, grad=grad: grad(u, v, jnp.float32(10.0)),
        grad(u, v, jnp.float32(10.0))]
  return runners


def report(title, times, chunk):
  """Prints the timings; returns {name: (wall ratio, cpu ratio)}. A ratio
  is the median over rounds of the two variants' times *in the same round*
  (they ran back to back, under the same load)."""
  wall, cpu = times
  med = lambda t: {v: statistics.median(x) for v, x in t.items()}  # noqa: E731
  mw, mc = med(wall), med(cpu)
  print(f"\n{title}")
  print(f"  {'loss':6s} {'chunk':>6s} {'teacher':>8s} {'variant':>14s} "
        f"{'wall ms':>9s} {'(min':>8s} {'max)':>8s} {'cpu ms':>9s}")
  for v in wall:
    print(f"  {v[0]:6s} {v[1]:6d} {v[2]:>8s} {v[3]:>14s} {1e3 * mw[v]:9.2f} "
          f"{1e3 * min(wall[v]):8.2f} {1e3 * max(wall[v]):8.2f} {1e3 * mc[v]:9.2f}")
  paired = lambda t, a, b: statistics.median(  # noqa: E731
      x / y for x, y in zip(t[a], t[b]))
  clip = ("clip", 0, "self", "")
  pairs = {"psd / clip (dense loss)": (("psd", 0, "self", ""), clip),
           f"psd / clip (chunk {chunk})": (("psd", chunk, "self", ""),
                                           ("clip", chunk, "self", "")),
           f"chunk {chunk} / dense (psd)": (("psd", chunk, "self", ""),
                                            ("psd", 0, "self", "")),
           f"chunk {chunk} / dense (clip)": (("clip", chunk, "self", ""), clip),
           "ema / clip (dense loss)": (("psd", 0, "ema", ""), clip),
           "bank / clip (dense loss)": (("psd", 0, "bank", ""), clip),
           f"bank / clip (chunk {chunk})": (("psd", chunk, "bank", ""),
                                            ("clip", chunk, "self", "")),
           "locked image / full (clip)": (("clip", 0, "self", "lock_image"), clip),
           "patch dropout / none (clip)": (("clip", 0, "self", "patch_dropout"),
                                           clip)}
  return {name: (paired(wall, a, b), paired(cpu, a, b))
          for name, (a, b) in pairs.items() if a in wall and b in wall}


# Step-time targets per ratio (judged on CPU time on a CPU backend).
TARGETS = {"psd / clip": 1.02, "bank / clip": 1.03,
           "locked image / full": 0.75, "patch dropout / none": 0.6}


def main(argv=None):
  args = parse_args(argv)
  c = args.chunk_size
  if args.only:
    variants = [("clip", 0, "self", ""), ("clip", 0, "self", args.only)]
  else:
    variants = [(*v, "") for v in (
        ("clip", 0, "self"), ("psd", 0, "self"), ("clip", c, "self"),
        ("psd", c, "self"), ("psd", 0, "ema"), ("psd", 0, "bank"),
        ("psd", c, "bank"))] + [("clip", 0, "self", "lock_image"),
                                ("clip", 0, "self", "patch_dropout")]
  runners, mesh = step_runners(args, variants)
  step_times = interleaved(runners, args.rounds, args.steps)
  loss_times = interleaved(loss_runners(args, variants, mesh), args.rounds,
                           4 * args.steps)

  print(f"\nmodel={args.model} dtype={args.dtype} global_batch={args.batch_size} "
        f"patch_dropout={args.patch_dropout} "
        f"image={args.image_size} context={args.context_length} "
        f"mesh={dict(mesh.shape)} devices={jax.device_count()}x"
        f"{jax.devices()[0].device_kind} rounds={args.rounds}")
  step_rows = report(f"train step ({args.steps} steps per round)", step_times, c)
  loss_rows = report(f"loss alone, forward + backward, d={args.loss_embed_dim}",
                     loss_times, c)
  # CPU time on a (shared) CPU backend; wall time on accelerators, where the
  # host mostly waits.
  on_cpu = jax.default_backend() == "cpu"
  print(f"\npaired ratios (wall, cpu)      train step        loss alone"
        f"      [target judged on {'cpu' if on_cpu else 'wall'} time]")
  for name, (s_wall, s_cpu) in step_rows.items():
    l_wall, l_cpu = loss_rows.get(name, (float("nan"), float("nan")))
    target = next((t for prefix, t in TARGETS.items() if name.startswith(prefix)),
                  None)
    verdict = ""
    if target is not None:
      ratio = s_cpu if on_cpu else s_wall
      verdict = (f"   step target <= {target}: "
                 f"{'met' if ratio <= target else 'MISSED'}")
    print(f"  {name:26s} {s_wall:7.3f} {s_cpu:7.3f}   {l_wall:7.3f} {l_cpu:7.3f}"
          f"{verdict}")


if __name__ == "__main__":
  main()
