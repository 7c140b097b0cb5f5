#!/usr/bin/env bash
# Issue 34's GPU check in one device call (benchmarks/gpu_check.py: the card, the 6B forward at
# 1 × 20 and 2 × 20, visage-predict end to end on a 1080p and a 720p video beside the forward
# alone and the host alone, the stage-2 Expert-2 step for each attention × remat choice,
# accumulation 4 and stage 1), all within GPU_CHECK_BUDGET_S seconds (default 500). Its records
# go to $OUT/gpu_check.jsonl (or ./gpu_check_out) as they are measured; the last line printed is
# one JSON object.
#
#     bash benchmarks/gpu_wheels.sh                     # here, once: the wheels that machine lacks
#     mv tests/golden /tmp/visage-golden                # here: see below
#     device run: bash benchmarks/gpu_check.sh          carry [".device_wheels"], timeout_s 600
#     mv /tmp/visage-golden tests/golden                # here, after the call
#
# The device tool carries 64 MiB at most, the working tree included: the wheels (48 MiB) and the
# golden fixtures (tests/golden, 43 MiB) do not fit together, and this check reads no golden file.
#     bash benchmarks/gpu_check.sh --config=tiny --videos='320x180,2,30'   # a dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(mktemp -d)
missing=()
for pair in av:av decord:decord zlib_ng:zlib-ng ml_collections:ml-collections PIL:pillow; do
  python3 -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  [[ -d .device_wheels ]] || { echo "gpu_check.sh: missing ${missing[*]}: carry .device_wheels (benchmarks/gpu_wheels.sh)" >&2; exit 2; }
  python3 -m pip install --quiet --no-index --find-links .device_wheels --no-deps --target "$deps" "${missing[@]}"
fi
export PYTHONPATH="$PWD:$deps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX takes 75 % of the card by default; the 6B step without remat needs more of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec python3 benchmarks/gpu_check.py --budget_s="${GPU_CHECK_BUDGET_S:-500}" "$@"
