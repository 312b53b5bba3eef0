#!/usr/bin/env bash
# Installs into a fresh virtualenv (.venv) and trains the offline demo: PSD,
# then the CLIP baseline, on the built-in synthetic data (a few minutes on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt -e .
export TF_CPP_MIN_LOG_LEVEL=3
out="${1:-/tmp/cvlg_demo}"
.venv/bin/python -m cvlg_jax.main --config=configs/demo.py --workdir="$out/psd"
.venv/bin/python -m cvlg_jax.main --config=configs/demo.py:clip --workdir="$out/clip"
# Both runs side by side: the last evaluation as a table, the curves as a PNG.
.venv/bin/python -m launch.plot "$out/psd" "$out/clip" --out="$out/curves.png"
echo "Runs: $out/psd and $out/clip (metrics.jsonl, checkpoints/, run_info.json)."
