"""Input-pipeline throughput per core: cvlg_jax's transform vs open_clip's.

    pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0  # the peer
    python benchmarks/data_pipeline.py [--sizes=500x375,1024x768 --num_examples=256
                                        --rounds=5 --crop_min_scale=0.9 --workers=N]

The work per example, from a record already read from an ArrayRecord shard
(JPEG bytes + caption) to what the trainer consumes:
  * open_clip: PIL decode (``convert("RGB")``) + ``open_clip.image_transform(224,
    is_train=True)`` (random-resized-crop, scale 0.9-1, bicubic, then float
    tensor + normalise) + its CLIP tokenizer, one example at a time, as its
    data loader workers do (torch at 1 thread, as in a loader worker);
  * cvlg_jax: ``decode_example`` (same crop distribution, + random flip, uint8
    out: normalisation happens on device) + ClipBpeTokenizer on the same
    merges file, with the per-example RNG Grain's ``random_map`` gives;
  * cvlg_jax exact: the same with ``fast=False`` (full decode, one bicubic
    pass), to show what the fast path buys.
All run in this one process on one core, interleaved round by round (the
order rotates), so load on a shared machine hits each alike; the speed-up is
the median over rounds of open_clip's CPU time / cvlg_jax's within a round.
CPU time is the load-robust measure (waiting for a core costs wall time, not
CPU time); wall time is printed too. Last, the real training pipeline
(``pipeline.train_dataset``: Grain, ``--workers`` processes, batches of 32)
runs on the same shard; its steady examples/s per core (wall / cores) is
compared with the single-process cvlg_jax rate.

Without open_clip the peer row is skipped and the builtin tokenizer stands in
for CLIP BPE (no merges file ships with cvlg_jax).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from array_record.python.array_record_module import ArrayRecordWriter
import numpy as np
from PIL import Image

from cvlg_jax import config as config_lib
from cvlg_jax.data import pipeline, records
from cvlg_jax.data.decode import decode_example
from cvlg_jax.data.sources import ArrayRecordImageText
from cvlg_jax.data.tokenizers import HashWordTokenizer

_WORDS = ("a an the photo picture close-up painting of my our two three small big "
          "red green blue yellow dark old new wooden shiny dog cat bird car house "
          "tree flower boat street beach mountain city kitchen table man woman child "
          "on in at near under with and sitting running standing during sunset "
          "winter summer night morning, . !").split()


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
  """A JPEG (quality 90) with smooth regions, edges and mild noise."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  k = 500 / width
  base = (rng.uniform(0, 255, 3) + rng.uniform(-0.3, 0.3, 3) * k * x[..., None]
          + rng.uniform(-0.3, 0.3, 3) * k * y[..., None])
  for _ in range(6):
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(20, 120) / k
    base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  base += rng.normal(0, 6, base.shape)
  buf = io.BytesIO()
  Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def caption(rng: np.random.Generator) -> str:
  return " ".join(rng.choice(_WORDS, int(rng.integers(5, 16))))


def write_shard(path: str, width: int, height: int, n: int, distinct: int = 64) -> float:
  """n records cycling through ``distinct`` images; returns mean JPEG KiB."""
  rng = np.random.default_rng(0)
  images = [photo_like(rng, width, height) for _ in range(min(n, distinct))]
  writer = ArrayRecordWriter(path, "group_size:1")
  for i in range(n):
    writer.write(records.encode_record(str(i), images[i % len(images)], caption(rng)))
  writer.close()
  return float(np.mean([len(b) for b in images])) / 1024


# --------------------------------------------------------------- the sides ---

def cvlg_side(tokenizer, image_size, scale, fast):
  def run(items):
    for i, record in items:
      ex = decode_example(record, np.random.default_rng(i), train=True,
                          image_size=image_size, crop_scale=(scale, 1.0), flip=True,
                          fast=fast)
      tokenizer([ex["caption"]])
  return run


def open_clip_side(image_size, scale):
  import open_clip  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  transform = open_clip.image_transform(image_size, is_train=True,
                                        aug_cfg=dict(scale=(scale, 1.0)))
  tokenizer = open_clip.tokenizer.SimpleTokenizer()

  def run(items):
    for _, record in items:
      transform(Image.open(io.BytesIO(record["image"])).convert("RGB"))
      tokenizer([record["caption"]])
  return run, tokenizer


def interleaved(sides, items, rounds):
  """Per side, per round: (CPU s, wall s) for one pass over ``items``."""
  names = list(sides)
  times = {s: [] for s in names}
  for fn in sides.values():
    fn(items[:8])  # warm caches and lazy imports
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      c0, t0 = time.process_time(), time.perf_counter()
      sides[name](items)
      times[name].append((time.process_time() - c0, time.perf_counter() - t0))
  return times


def tree_cpu_seconds() -> float:
  """CPU seconds used so far by this process and its live descendants
  (Grain's workers), from /proc; Linux only."""
  ticks, parent = os.sysconf("SC_CLK_TCK"), {}
  cpu = {}
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    parent[int(pid)] = int(fields[1])
    cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / ticks
  me, total = os.getpid(), time.process_time()
  for pid in cpu:
    p = parent.get(pid)
    while p is not None and p != me and p > 1:
      p = parent.get(p)
    if p == me and pid != me:
      total += cpu[pid]
  return total


def grain_rate(path, tokenizer, image_size, scale, workers, batch_size, batches):
  """Steady (examples/s wall, examples per CPU-second over all processes) of
  the training pipeline, after 2 batches per worker."""
  c = config_lib.base_config()
  c.data.source, c.data.data_dir = "arrayrecord", path
  c.data.image_size, c.data.crop_min_scale, c.data.flip = image_size, scale, True
  c.data.worker_count, c.train.batch_size = workers, batch_size
  it = iter(pipeline.train_dataset(c, tokenizer, process_index=0, process_count=1))
  warm = 2 * max(1, workers)
  for _ in range(warm):
    next(it)
  t0, c0 = time.perf_counter(), tree_cpu_seconds()
  for _ in range(batches):
    next(it)
  n = batches * batch_size
  rates = n / (time.perf_counter() - t0), n / (tree_cpu_seconds() - c0)
  if hasattr(it, "close"):
    it.close()
  return rates


def spread(xs):
  return statistics.median(xs), min(xs), max(xs)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="500x375,1024x768")
  p.add_argument("--num_examples", type=int, default=256)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--crop_min_scale", type=float, default=0.9,
                 help="RRC scale lower bound (open_clip's and cvlg_jax's default)")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  p.add_argument("--grain_batches", type=int, default=24)
  p.add_argument("--peer", choices=("auto", "off"), default="auto")
  args = p.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags.

  peer = None
  if args.peer == "auto":
    try:
      peer = open_clip_side(args.image_size, args.crop_min_scale)
    except ImportError:
      print("open_clip/torch not installed: cvlg_jax rows only, builtin tokenizer "
            "(install the peer with: pip install torch==2.14.1 torchvision==0.29.1 "
            "open_clip_torch==3.3.0)")
  if peer is not None:
    import open_clip  # pylint: disable=import-outside-toplevel
    from cvlg_jax.data.clip_bpe import ClipBpeTokenizer  # pylint: disable=import-outside-toplevel
    merges = os.path.join(os.path.dirname(open_clip.__file__),
                          "bpe_simple_vocab_16e6.txt.gz")
    tokenizer, tok_name = ClipBpeTokenizer(merges, context_length=77), "CLIP BPE"
  else:
    tokenizer, tok_name = HashWordTokenizer(context_length=77), "builtin"

  print(f"{os.cpu_count()} CPUs visible, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; RRC {args.image_size} "
        f"scale ({args.crop_min_scale}, 1) + {tok_name} tokenize; "
        f"{args.num_examples} examples x {args.rounds} interleaved rounds per row")
  for size in args.sizes.split(","):
    width, height = map(int, size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, records.shard_name("bench", 0, 1))
      kib = write_shard(path, width, height, args.num_examples)
      source = ArrayRecordImageText(path)
      items = [(i, source[i]) for i in range(len(source))]
      sides = {}
      if peer is not None:
        sides["open_clip"] = peer[0]
        ours = tokenizer([r["caption"] for _, r in items[:64]])
        theirs = peer[1]([r["caption"] for _, r in items[:64]]).numpy()
        if not np.array_equal(ours, theirs):
          raise SystemExit("ClipBpeTokenizer and open_clip's tokenizer disagree")
      sides["cvlg_jax exact"] = cvlg_side(tokenizer, args.image_size,
                                          args.crop_min_scale, fast=False)
      sides["cvlg_jax"] = cvlg_side(tokenizer, args.image_size,
                                    args.crop_min_scale, fast=True)
      times = interleaved(sides, items, args.rounds)
      n = len(items)
      print(f"\n{width}x{height} JPEGs ({kib:.0f} KiB each), 1 process, 1 core")
      print(f"  {'':16s} {'cpu ms/ex':>10s} {'wall ms/ex':>11s} {'examples/s/core':>16s}")
      for name, t in times.items():
        cpu = statistics.median(c for c, _ in t) / n
        wall = statistics.median(w for _, w in t) / n
        print(f"  {name:16s} {1e3 * cpu:10.3f} {1e3 * wall:11.3f} {1 / cpu:16.1f}")
      pairs = [("cvlg_jax", "open_clip"), ("cvlg_jax exact", "open_clip"),
               ("cvlg_jax", "cvlg_jax exact")]
      for fast, slow in pairs:
        if slow not in times:
          continue
        for k, unit in ((0, "cpu"), (1, "wall")):
          med, lo, hi = spread([b[k] / a[k] for a, b in zip(times[fast], times[slow])])
          verdict = ""
          if (fast, slow, unit) == ("cvlg_jax", "open_clip", "cpu"):
            verdict = f"   target >= 1.5: {'met' if med >= 1.5 else 'MISSED'}"
          print(f"  speed-up {fast} over {slow} ({unit:4s}): {med:5.2f}x "
                f"(rounds {lo:.2f}-{hi:.2f}){verdict}")
      single = n / statistics.median(c for c, _ in times["cvlg_jax"])
      wall_rate, cpu_rate = grain_rate(path, tokenizer, args.image_size,
                                       args.crop_min_scale, args.workers, 32,
                                       args.grain_batches)
      cores = os.cpu_count() or 1
      print(f"  grain train_dataset, {args.workers} workers, steady: "
            f"{cpu_rate:.1f} examples per CPU-second (all processes) = "
            f"{cpu_rate / single:.2f}x the single-process cvlg_jax rate per core; "
            f"wall {wall_rate:.1f} examples/s = {wall_rate / cores:.1f}/core "
            f"over {cores} cores")


if __name__ == "__main__":
  main()
