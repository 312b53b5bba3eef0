"""Training throughput (examples/s) and model FLOPs utilisation per model size.

    python benchmarks/throughput.py                    # small models, CPU
    python benchmarks/throughput.py --model=vit_b32,vit_b16 --dtype=bfloat16 \\
        --image_size=224 --context_length=77 --batch_size=256

Runs the real train step (``train_step.make_train_step``: towers, sharded
loss, AdamW) on all local devices with a fixed random batch, after warm-up.
Model FLOPs per step = 3 x the forward FLOPs (forward + backward, the usual
MFU convention: rematerialisation is not counted), the forward counted by
XLA's cost analysis of the unpartitioned ``model.apply`` on the global
batch. MFU = model FLOP/s / (devices x peak FLOP/s per device); the peak
comes from ``PEAK_TFLOPS`` by device kind, or ``--peak_tflops``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cvlg_jax import config as config_lib  # noqa: E402
from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.step.plan import make_plan

# Dense peak TFLOP/s per device from vendor data sheets: bf16 and the float32
# matmul path XLA uses by default (TF32 on NVIDIA Ampere+, bf16 passes on TPU).
# First substring match of jax.Device.device_kind wins.
PEAK_TFLOPS = (
    ("H100 PCIe", dict(bfloat16=756.0, float32=378.0)),
    ("H200", dict(bfloat16=989.0, float32=494.0)),
    ("H100", dict(bfloat16=989.0, float32=494.0)),
    ("A100", dict(bfloat16=312.0, float32=156.0)),
    ("L40S", dict(bfloat16=362.0, float32=183.0)),
    ("L4", dict(bfloat16=121.0, float32=60.0)),
    ("TPU v4", dict(bfloat16=275.0, float32=275.0)),
    ("TPU v5 lite", dict(bfloat16=197.0, float32=197.0)),
    ("TPU v5", dict(bfloat16=459.0, float32=459.0)),
    ("TPU v6 lite", dict(bfloat16=918.0, float32=918.0)),
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="tiny,demo", help="comma-separated names")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--context_length", type=int, default=16)
  p.add_argument("--loss", default="psd")
  p.add_argument("--chunk_size", type=int, default=0)
  p.add_argument("--grad_accum_steps", type=int, default=1)
  p.add_argument("--remat", action="store_true")
  p.add_argument("--fsdp", type=int, default=1)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="peak TFLOP/s per device (overrides the table)")
  return p.parse_args(argv)


def peak_tflops(device_kind, dtype, override=None):
  if override:
    return override
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return peaks[dtype]
  return None


def forward_flops(model, variables, config):
  """XLA's FLOP count for one forward pass of the global batch
  (``variables``: params plus any BatchNorm statistics)."""
  b, s = config.train.batch_size, config.data.image_size
  images = jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((b, config.data.context_length), jnp.int32)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          variables)
  lowered = jax.jit(lambda v, x, t: model.apply(v, x, t)).lower(
      abstract, images, tokens)
  return float(lowered.cost_analysis()["flops"])


def measure(args, name):
  c = config_lib.base_config()
  c.model.name, c.model.dtype, c.model.remat = name, args.dtype, args.remat
  c.data.image_size, c.data.context_length = args.image_size, args.context_length
  c.loss.name, c.loss.chunk_size = args.loss, args.chunk_size
  c.train.batch_size, c.train.grad_accum_steps = args.batch_size, args.grad_accum_steps
  c.mesh.data, c.mesh.fsdp = -1, args.fsdp
  config_lib.validate(c)
  plan = make_plan(c, jax.device_count())
  mesh = sharding.make_mesh(c.mesh)
  tokenizer, model, tx, schedule = train_state.build(plan)
  state, shardings = train_state.init_state(plan, model, tx, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  rng = np.random.default_rng(0)
  b, s, n = args.batch_size, args.image_size, args.context_length
  batch = sharding.shard_batch(dict(
      image=rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
      tokens=np.where(np.arange(n) < n // 2,
                      rng.integers(1, tokenizer.vocab_size, (b, n)), 0).astype(np.int32)),
      mesh)
  t0 = time.perf_counter()
  step = train_step.make_train_step(plan, model, tx, schedule, mesh,
                                    shardings).update.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / args.steps
  flops = 3 * forward_flops(model, train_state.eval_variables(state), c)
  return dict(model=name, params_m=n_params / 1e6, compile_s=compile_s,
              step_s=step_s, examples_s=args.batch_size / step_s,
              tflop_step=flops / 1e12, tflops=flops / step_s / 1e12,
              loss=float(metrics["loss"]))


def main(argv=None):
  args = parse_args(argv)
  kind = jax.devices()[0].device_kind
  peak = peak_tflops(kind, args.dtype, args.peak_tflops)
  ndev = jax.device_count()
  print(f"backend={jax.default_backend()} devices={ndev}x{kind} dtype={args.dtype} "
        f"global_batch={args.batch_size} image={args.image_size} "
        f"context={args.context_length} loss={args.loss} "
        f"chunk_size={args.chunk_size} grad_accum={args.grad_accum_steps} "
        f"remat={args.remat} peak/device="
        f"{'unknown (pass --peak_tflops)' if peak is None else f'{peak:g} TFLOP/s'}")
  print(f"{'model':10s} {'params M':>9s} {'compile s':>10s} {'step ms':>9s} "
        f"{'examples/s':>11s} {'TFLOP/step':>11s} {'TFLOP/s':>8s} {'MFU':>7s}")
  for name in args.model.split(","):
    r = measure(args, name)
    mfu = ("n/a" if peak is None
           else f"{100 * r['tflops'] / (peak * ndev):.1f}%")
    print(f"{r['model']:10s} {r['params_m']:9.2f} {r['compile_s']:10.1f} "
          f"{1e3 * r['step_s']:9.1f} {r['examples_s']:11.1f} "
          f"{r['tflop_step']:11.4f} {r['tflops']:8.3f} {mfu:>7s}", flush=True)


if __name__ == "__main__":
  main()
