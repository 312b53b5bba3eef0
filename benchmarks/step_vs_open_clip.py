"""CPU train step, cvlg_jax vs open_clip, on the same model and batch.

    pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0  # the peer
    python benchmarks/step_vs_open_clip.py [--rounds=6 --steps=1 --threads=N]

One step is what each project's trainer runs: both towers forward, the CLIP
contrastive loss, backward, global-norm clipping (1.0) and AdamW (open_clip's
hyper-parameters and weight-decay groups). The model is registry
``bench_s32`` (ViT 6x384 p32 at 224 px; text 6x256, 4 heads, context 77,
vocab 49,408; embed 256) and open_clip's ``CLIP`` built from the same numbers
(tanh GELU and LayerNorm eps 1e-6 as in cvlg_jax's towers), so both do the
same FLOPs; the parameter counts are printed and must match.

Each side runs in its own worker process (one JAX CPU device / torch
intra-op threads over all cores; neither spins threads while the other runs,
and each measures its own CPU time). The parent alternates them round by
round (who goes first flips every round), so drifting load on a shared
machine hits both alike; the ratio is the median over rounds of
cvlg_jax/open_clip within a round, with the spread. Without open_clip only
the cvlg_jax rows are printed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "bench_s32"
# open_clip's names for the same towers (registry.py: vit_bench_s32, text_bench).
VISION_CFG = dict(layers=6, width=384, head_width=64, mlp_ratio=4.0, patch_size=32,
                  image_size=224, act_kwargs=dict(approximate="tanh"),
                  norm_kwargs=dict(eps=1e-6))
TEXT_CFG = dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=6,
                mlp_ratio=4.0, act_kwargs=dict(approximate="tanh"),
                norm_kwargs=dict(eps=1e-6))
EMBED_DIM = 256
LR, WD, BETAS, EPS, CLIP_NORM = 5e-4, 0.2, (0.9, 0.98), 1e-6, 1.0


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--steps", type=int, default=1, help="steps per side per round")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  p.add_argument("--peer", choices=("auto", "off"), default="auto",
                 help="off: time cvlg_jax alone")
  return p.parse_args(argv)


def random_batch(batch_size, seed=0):
  """uint8 images and end-padded CLIP-style token rows (sot ... eot, 0s)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  n, vocab = TEXT_CFG["context_length"], TEXT_CFG["vocab_size"]
  images = rng.integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
  lengths = rng.integers(5, n + 1, (batch_size, 1))
  tokens = rng.integers(1, vocab - 2, (batch_size, n))
  tokens[:, 0] = vocab - 2
  tokens = np.where(np.arange(n) < lengths - 1, tokens, 0)
  tokens[np.arange(batch_size), lengths[:, 0] - 1] = vocab - 1
  return images, tokens.astype(np.int32)


# ------------------------------------------------------------------ cvlg_jax ---

def jax_side(args):
  """(params, step function advancing the state, compile seconds)."""
  sys.path.insert(0, ROOT)
  # One device on all cores: drop a fake-device count inherited from tests.
  flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))
  import jax
  from cvlg_jax import config as config_lib
  from cvlg_jax.step import sharding, train_state, train_step
  from cvlg_jax.step.plan import make_plan
  c = config_lib.base_config()
  c.model.name = MODEL
  c.loss.name, c.loss.chunk_size = "clip", 0
  c.data.image_size = VISION_CFG["image_size"]
  c.data.context_length = TEXT_CFG["context_length"]
  c.data.vocab_size = TEXT_CFG["vocab_size"]  # builtin tokenizer of that size
  c.optim.learning_rate, c.optim.weight_decay = LR, WD
  c.optim.b1, c.optim.b2, c.optim.eps = *BETAS, EPS
  c.optim.grad_clip_norm = CLIP_NORM
  c.train.batch_size, c.train.steps = args.batch_size, 10_000
  config_lib.validate(c)
  plan = make_plan(c, jax.device_count())
  _, model, tx, schedule = train_state.build(plan)
  mesh = sharding.make_mesh(c.mesh)
  state, shardings = train_state.init_state(plan, model, tx, mesh)
  images, tokens = random_batch(args.batch_size)
  batch = sharding.shard_batch(dict(image=images, tokens=tokens), mesh)
  t0 = time.perf_counter()
  step = train_step.make_train_step(plan, model, tx, schedule, mesh,
                                    shardings).update.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  box = [state]

  def run(k):
    for _ in range(k):
      box[0], metrics = step(box[0], batch)
    jax.block_until_ready((box[0], metrics))
    return float(metrics["loss"])

  info = dict(params=n_params, compile_s=compile_s, devices=jax.device_count(),
              backend=jax.default_backend(), version=jax.__version__,
              xla_flags=os.environ.get("XLA_FLAGS", ""))
  return run, info


# ----------------------------------------------------------------- open_clip ---

def torch_side(args):
  import math
  import numpy as np
  import open_clip
  import torch
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = open_clip.model.CLIP(EMBED_DIM, VISION_CFG, TEXT_CFG)
  model.train()
  loss_fn = open_clip.loss.ClipLoss()
  # open_clip's training/main.py groups: no weight decay on gains, biases,
  # norms and the logit scale.
  exclude = lambda n, p: (p.ndim < 2 or "bn" in n or "ln" in n  # noqa: E731
                          or "bias" in n or "logit_scale" in n)
  named = list(model.named_parameters())
  opt = torch.optim.AdamW(
      [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
       {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WD}],
      lr=LR, betas=BETAS, eps=EPS)
  images_u8, tokens = random_batch(args.batch_size)
  mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
  # open_clip's data loader delivers normalised float32 NCHW.
  images = (torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255 - mean) / std
  images = images.contiguous()
  tokens = torch.from_numpy(tokens.astype(np.int64))
  counter = [0]

  def one_step():
    # open_clip's cosine schedule assigns the lr each step.
    for g in opt.param_groups:
      g["lr"] = LR * 0.5 * (1 + math.cos(math.pi * counter[0] / 10_000))
    counter[0] += 1
    opt.zero_grad(set_to_none=True)
    img, txt, scale = model(images, tokens)
    loss = loss_fn(img, txt, scale)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM, norm_type=2.0)
    opt.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, math.log(100))
    return loss

  one_step()  # first call allocates

  def run(k):
    for _ in range(k):
      loss = one_step()
    return float(loss.detach())

  info = dict(params=sum(p.numel() for p in model.parameters()), compile_s=0.0,
              threads=torch.get_num_threads(), version=torch.__version__,
              open_clip=open_clip.__version__)
  return run, info


# -------------------------------------------------------------------- driver ---

def worker(side, args, conn):
  """Builds one side, warms it up, then times ``k`` steps per request."""
  try:
    run, info = (jax_side if side == "cvlg_jax" else torch_side)(args)
    run(1)
    conn.send(("ready", info))
    while (k := conn.recv()) is not None:
      t0, c0 = time.perf_counter(), time.process_time()
      loss = run(k)
      conn.send(((time.perf_counter() - t0) / k, (time.process_time() - c0) / k,
                 loss))
  except Exception as e:  # pylint: disable=broad-except
    conn.send(("error", f"{type(e).__name__}: {e}"))
    raise


def peer_available() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return all(importlib.util.find_spec(m) is not None for m in ("open_clip", "torch"))


def start(side, args, ctx):
  parent, child = ctx.Pipe()
  proc = ctx.Process(target=worker, args=(side, args, child), daemon=True)
  proc.start()
  return proc, parent


def summary(xs):
  return statistics.median(xs), min(xs), max(xs)


def main(argv=None):
  args = parse_args(argv)
  sides = ["cvlg_jax"]
  if args.peer == "auto" and peer_available():
    sides.append("open_clip")
  elif args.peer == "auto":
    print("open_clip/torch not installed: timing cvlg_jax only (install the peer "
          "with: pip install torch==2.14.1 torchvision==0.29.1 "
          "open_clip_torch==3.3.0)")
  ctx = mp.get_context("spawn")
  workers, infos = {}, {}
  for side in sides:  # built one after the other: compiles do not overlap
    workers[side] = start(side, args, ctx)
    tag, info = workers[side][1].recv()
    if tag == "error":
      raise SystemExit(f"{side} worker failed: {info}")
    infos[side] = info
  wall = {s: [] for s in sides}
  cpu = {s: [] for s in sides}
  try:
    for r in range(args.rounds):
      order = sides if r % 2 == 0 else sides[::-1]
      for side in order:
        conn = workers[side][1]
        conn.send(args.steps)
        w, c, _ = conn.recv()
        wall[side].append(w)
        cpu[side].append(c)
  finally:
    for proc, conn in workers.values():
      conn.send(None)
      proc.join(timeout=30)

  print(f"\nCPU train step, model {MODEL} (ViT 6x384 p32 224px, text 6x256 ctx 77, "
        f"vocab 49408, embed 256), batch {args.batch_size}, "
        f"{args.rounds} rounds x {args.steps} steps per side, "
        f"{os.cpu_count()} cores visible, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
  for side in sides:
    i = infos[side]
    extra = (f"jax {i['version']}, {i['devices']} {i['backend']} device, "
             f"XLA_FLAGS={i['xla_flags']!r}, compile {i['compile_s']:.1f}s"
             if side == "cvlg_jax" else
             f"torch {i['version']}, open_clip {i['open_clip']}, "
             f"{i['threads']} threads")
    print(f"  {side:10s} params {i['params']:,}  ({extra})")
  if len(sides) == 2 and infos["cvlg_jax"]["params"] != infos["open_clip"]["params"]:
    raise SystemExit("parameter counts differ: the two models are not the same")
  print(f"\n  {'':10s} {'wall ms':>9s} {'(min':>8s} {'max)':>8s} {'cpu ms':>9s} "
        f"{'examples/s/core':>16s}")
  for side in sides:
    mw, lo, hi = summary(wall[side])
    mc = statistics.median(cpu[side])
    per_core = args.batch_size / mc  # CPU seconds: per core used
    print(f"  {side:10s} {1e3 * mw:9.1f} {1e3 * lo:8.1f} {1e3 * hi:8.1f} "
          f"{1e3 * mc:9.1f} {per_core:16.1f}")
  if len(sides) == 2:
    for name, t in (("wall", wall), ("cpu", cpu)):
      med, lo, hi = summary([a / b for a, b in zip(t["cvlg_jax"], t["open_clip"])])
      print(f"  cvlg_jax / open_clip ({name:4s}): {med:.3f}  (rounds {lo:.3f}-{hi:.3f})"
            + ("   target <= 1.0: " + ("met" if med <= 1.0 else "MISSED")
               if name == "wall" else ""))


if __name__ == "__main__":
  main()
