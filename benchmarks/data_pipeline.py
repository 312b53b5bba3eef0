"""Input-pipeline throughput: Grain with worker processes vs a plain PIL loop.

Both do the same per-example work on the same ArrayRecord shard of 500x375
JPEGs: read, msgpack-decode, JPEG-decode, random-resized-crop to 224, flip,
tokenize. Prints examples/s per CPU core for each and their ratio (1.0 means
Grain's workers add no per-core overhead). Default runtime is well under a
minute on 2 cores.

  python benchmarks/data_pipeline.py [--num_examples=1000] [--workers=N]
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from array_record.python.array_record_module import ArrayRecordWriter
import grain
import numpy as np
from PIL import Image

from cvlg_jax.data import records
from cvlg_jax.data.decode import decode_example
from cvlg_jax.data.skipping import SkipAndCount
from cvlg_jax.data.sources import ArrayRecordImageText
from cvlg_jax.data.tokenizers import HashWordTokenizer


def _photo_like(rng: np.random.Generator) -> bytes:
  """A 500x375 JPEG with smooth regions, edges and mild noise (~photo size)."""
  y, x = np.mgrid[0:375, 0:500].astype(np.float32)
  base = rng.uniform(0, 255, 3) + rng.uniform(-0.3, 0.3, 3) * x[..., None] \
      + rng.uniform(-0.3, 0.3, 3) * y[..., None]
  for _ in range(6):
    cx, cy, r = rng.uniform(0, 500), rng.uniform(0, 375), rng.uniform(20, 120)
    base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  base += rng.normal(0, 6, base.shape)
  buf = io.BytesIO()
  Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write_shard(path: str, n: int, distinct: int = 64) -> float:
  """n records cycling through ``distinct`` images; returns mean JPEG KiB."""
  rng = np.random.default_rng(0)
  images = [_photo_like(rng) for _ in range(min(n, distinct))]
  writer = ArrayRecordWriter(path, "group_size:1")
  for i in range(n):
    writer.write(records.encode_record(
        str(i), images[i % len(images)], f"a photo number {i} of a red circle"))
  writer.close()
  return float(np.mean([len(b) for b in images])) / 1024


class Tokenize(grain.transforms.Map):

  def __init__(self, tokenizer: HashWordTokenizer):
    self.tokenizer = tokenizer

  def map(self, element):
    return {**element, "tokens": self.tokenizer([element["caption"]])[0]}


def plain_loop(path: str, image_size: int, tokenizer) -> tuple[int, float]:
  """The same work, one process, no Grain."""
  source = ArrayRecordImageText(path)
  order = np.random.default_rng(0).permutation(len(source))
  start = time.perf_counter()
  for i in order:
    rng = np.random.default_rng(int(i))
    ex = decode_example(source[int(i)], rng, train=True, image_size=image_size,
                        flip=True)
    ex["tokens"] = tokenizer([ex["caption"]])[0]
  return len(order), time.perf_counter() - start


def grain_pipeline(path: str, image_size: int, tokenizer, workers: int,
                   batch_size: int) -> tuple[int, float, int, float]:
  """(examples, seconds incl. worker start-up, examples and seconds after warm-up).

  Warm-up is the first 2 batches per worker, so the steady rate excludes
  process start-up and the first pass through each worker's buffers.
  """
  ds = grain.MapDataset.source(ArrayRecordImageText(path)).seed(0).shuffle()
  ds = ds.random_map(functools.partial(decode_example, train=True,
                                       image_size=image_size, flip=True))
  ds = SkipAndCount(ds.to_iter_dataset()).map(Tokenize(tokenizer)).batch(batch_size)
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                   per_worker_buffer_size=4))
  start = time.perf_counter()
  it = iter(ds)
  count, warm_count, warm_time = 0, 0, None
  for i, batch in enumerate(it):
    count += len(batch["caption"])
    if i + 1 == 2 * workers:
      warm_count, warm_time = count, time.perf_counter()
  end = time.perf_counter()
  it.close()
  if warm_time is None:
    raise ValueError("too few batches to measure a steady rate; raise --num_examples")
  return count, end - start, count - warm_count, end - warm_time


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num_examples", type=int, default=1000)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--batch_size", type=int, default=32)
  args = p.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags.
  tokenizer = HashWordTokenizer(context_length=32)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, records.shard_name("bench", 0, 1))
    kib = write_shard(path, args.num_examples)
    print(f"{args.num_examples} JPEGs of 500x375 ({kib:.0f} KiB each), "
          f"RRC {args.image_size} + flip + tokenize; {os.cpu_count()} CPUs visible")
    n_plain, t_plain = plain_loop(path, args.image_size, tokenizer)
    n_grain, t_total, n_steady, t_steady = grain_pipeline(
        path, args.image_size, tokenizer, args.workers, args.batch_size)
  assert n_plain == n_grain == args.num_examples, (n_plain, n_grain)
  plain_rate = n_plain / t_plain
  steady_rate = n_steady / t_steady / args.workers
  total_rate = n_grain / t_total / args.workers
  print(f"plain PIL loop, 1 process:      {plain_rate:8.1f} examples/s/core")
  print(f"grain, {args.workers} worker processes:    {steady_rate:8.1f} examples/s/core "
        f"steady ({total_rate:.1f} incl. start-up, {t_total:.1f}s in all)")
  print(f"ratio grain/plain per core:     {steady_rate / plain_rate:8.2f} steady, "
        f"{total_rate / plain_rate:.2f} incl. start-up")
  print(f"wall-clock speed-up:            {steady_rate * args.workers / plain_rate:8.2f}x")


if __name__ == "__main__":
  main()
