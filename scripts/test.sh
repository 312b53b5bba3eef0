#!/usr/bin/env bash
# Installs into a fresh virtualenv (.venv) and runs the test suite on 8 fake
# CPU devices, so every sharding code path is exercised without accelerators.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-test.txt -e .
# The optional torch/open_clip extra, so the pretrained-weights parity tests
# run too (they are skipped without it); CVLG_SKIP_INTEROP=1 leaves it out.
if [[ "${CVLG_SKIP_INTEROP:-0}" != 1 ]]; then
  .venv/bin/python -m pip install -q -r requirements-interop.txt -c requirements.txt
  # clip_benchmark's own code checks our CLIP_benchmark-format results
  # (tests/evaluation/test_clip_benchmark.py); its dependencies are not needed.
  .venv/bin/python -m pip install -q --no-deps clip_benchmark==1.6.2
fi
# libtpu, in a folder of its own: only the ahead-of-time TPU compile tests put
# it on their path (tests/run/test_aot.py), so no other test loads libtpu,
# probes for a TPU or prints its warnings. CVLG_SKIP_TPU_AOT=1 leaves it out.
if [[ "${CVLG_SKIP_TPU_AOT:-0}" != 1 ]]; then
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .libtpu \
    -r requirements-tpu-aot.txt
  export CVLG_LIBTPU_DIR="$PWD/.libtpu"
fi
export XLA_FLAGS="--xla_force_host_platform_device_count=8" JAX_PLATFORMS=cpu \
       TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
