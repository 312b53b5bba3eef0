"""PSD vs CLIP train-step time, and the streamed (chunked) loss vs the dense one.

    python benchmarks/step_time.py                # tiny model, 8 CPU devices
    python benchmarks/step_time.py --model=vit_b32 --image_size=224 \\
        --context_length=77 --batch_size=1024 --dtype=bfloat16

All variants share the model, the batch, the mesh and the initial params;
only ``loss.name`` ("clip": plain InfoNCE, no teacher work; "psd": soft
targets from the same forward pass) and ``loss.chunk_size`` differ. They are
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

from cvlg_jax import config as config_lib, losses, sharding, train_step  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="tiny")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--context_length", type=int, default=16)
  p.add_argument("--chunk_size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=9)
  p.add_argument("--steps", type=int, default=3, help="steps per timed round")
  p.add_argument("--fsdp", type=int, default=1)
  p.add_argument("--loss_embed_dim", type=int, default=512,
                 help="embedding size for the loss-only timing")
  return p.parse_args(argv)


def make_config(args, loss, chunk):
  c = config_lib.base_config()
  c.model.name, c.model.dtype = args.model, args.dtype
  c.data.image_size, c.data.context_length = args.image_size, args.context_length
  c.loss.name, c.loss.chunk_size = loss, chunk
  c.train.batch_size = args.batch_size
  c.mesh.data, c.mesh.fsdp = -1, args.fsdp
  config_lib.validate(c, num_devices=jax.device_count())
  return c


def random_batch(config, vocab_size, seed=0):
  """uint8 images and end-padded token rows, as the pipeline delivers them."""
  rng = np.random.default_rng(seed)
  b, s, n = config.train.batch_size, config.data.image_size, config.data.context_length
  tokens = rng.integers(1, vocab_size, size=(b, n), dtype=np.int32)
  lengths = rng.integers(2, n + 1, size=(b, 1))
  tokens = np.where(np.arange(n) < lengths, tokens, 0).astype(np.int32)
  images = rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8)
  return dict(image=images, tokens=tokens)


def interleaved(runners, rounds, steps):
  """Median seconds per call of each ``runners[v] = [fn, carry]``; fn maps
  carry -> carry, which is blocked on after each round."""
  names = list(runners)
  times = {v: [] for v in names}
  for r in range(rounds):
    for v in names[r % len(names):] + names[:r % len(names)]:
      fn, carry = runners[v]
      t0 = time.perf_counter()
      for _ in range(steps):
        carry = fn(carry)
      jax.block_until_ready(carry)
      times[v].append((time.perf_counter() - t0) / steps)
      runners[v][1] = carry
  return times


def step_runners(args, variants):
  runners, host, batch, mesh = {}, None, None, None
  for loss, chunk in variants:
    config = make_config(args, loss, chunk)
    tokenizer, model, tx, schedule = train_step.build(config)
    if host is None:
      mesh = sharding.make_mesh(config.mesh)
      state, shardings = train_step.init_state(config, model, tx, mesh)
      host = jax.device_get(state)
      batch = sharding.shard_batch(random_batch(config, tokenizer.vocab_size), mesh)
    state = jax.device_put(host, shardings)
    t0 = time.perf_counter()
    step = train_step.make_train_step(config, model, tx, schedule, mesh,
                                      shardings).lower(state, batch).compile()
    print(f"compiled step loss={loss} chunk_size={chunk} in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    runners[(loss, chunk)] = [lambda c, step=step: step(c[0], batch),
                              step(state, batch)]   # the first call warms up
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
  for loss, chunk in variants:
    fn = losses.sharded_contrastive_loss(mesh, chunk_size=chunk,
                                         distill=loss == "psd")
    f = lambda u, v, s, fn=fn: fn(u, v, s, jnp.float32(0.5), mask,  # noqa: E731
                                  jnp.float32(1.0))[0]
    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    runners[(loss, chunk)] = [lambda c, grad=grad: grad(u, v, jnp.float32(10.0)),
                              grad(u, v, jnp.float32(10.0))]
  return runners


def report(title, times, chunk):
  """Prints the timings; returns (name, median ratio, min ratio) rows. On a
  shared machine the minimum is the less load-sensitive estimate."""
  med = {v: statistics.median(t) for v, t in times.items()}
  low = {v: min(t) for v, t in times.items()}
  print(f"\n{title}")
  print(f"  {'loss':6s} {'chunk':>6s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
  for v, t in times.items():
    print(f"  {v[0]:6s} {v[1]:6d} {1e3 * med[v]:10.2f} {1e3 * low[v]:8.2f} "
          f"{1e3 * max(t):8.2f}")
  pairs = [("psd / clip (dense loss)", ("psd", 0), ("clip", 0)),
           (f"psd / clip (chunk {chunk})", ("psd", chunk), ("clip", chunk)),
           (f"chunk {chunk} / dense (psd)", ("psd", chunk), ("psd", 0)),
           (f"chunk {chunk} / dense (clip)", ("clip", chunk), ("clip", 0))]
  return [(name, med[a] / med[b], low[a] / low[b]) for name, a, b in pairs]


def main(argv=None):
  args = parse_args(argv)
  c = args.chunk_size
  variants = [("clip", 0), ("psd", 0), ("clip", c), ("psd", c)]
  runners, mesh = step_runners(args, variants)
  step_times = interleaved(runners, args.rounds, args.steps)
  loss_times = interleaved(loss_runners(args, variants, mesh), args.rounds,
                           4 * args.steps)

  print(f"\nmodel={args.model} dtype={args.dtype} global_batch={args.batch_size} "
        f"image={args.image_size} context={args.context_length} "
        f"mesh={dict(mesh.shape)} devices={jax.device_count()}x"
        f"{jax.devices()[0].device_kind} rounds={args.rounds}")
  step_rows = report(f"train step ({args.steps} steps per round)", step_times, c)
  loss_rows = report(f"loss alone, forward + backward, d={args.loss_embed_dim}",
                     loss_times, c)
  print("\nratios (median, min)           train step        loss alone")
  for (name, s_med, s_min), (_, l_med, l_min) in zip(step_rows, loss_rows):
    verdict = ""
    if name.startswith("psd / clip"):
      verdict = f"   step target <= 1.02: {'met' if s_med <= 1.02 else 'MISSED'}"
    print(f"  {name:26s} {s_med:7.3f} {s_min:7.3f}   {l_med:7.3f} {l_min:7.3f}"
          f"{verdict}")


if __name__ == "__main__":
  main()
