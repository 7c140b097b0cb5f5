#!/usr/bin/env bash
# Issue 10's GPU check in one device call: the host's per-frame writer stages on that machine's
# CPU, then the 6B model (random weights) on a synthetic 1080p 30 fps mp4 of 20 s end to end
# against its forward alone, with the host-only run's CPU ms a frame by thread role. Each
# benchmark's last line is JSON; both go to $OUT (or ./gpu_video_out) as well as to stdout.
#
#     bash benchmarks/gpu_wheels.sh                      # here, once
#     device run: bash benchmarks/gpu_video.sh           carry [".device_wheels"], timeout 600
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_video_out}
mkdir -p "$out"
deps=$(mktemp -d)
missing=()
for pair in av:av decord:decord zlib_ng:zlib-ng ml_collections:ml-collections PIL:pillow; do
  python3 -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  [[ -d .device_wheels ]] || { echo "gpu_video.sh: missing ${missing[*]}: carry .device_wheels (benchmarks/gpu_wheels.sh)" >&2; exit 2; }
  python3 -m pip install --quiet --no-index --find-links .device_wheels --no-deps --target "$deps" "${missing[@]}"
fi
export PYTHONPATH="$PWD:$deps${PYTHONPATH:+:$PYTHONPATH}"
python3 --version; nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/writer_stages.py | tail -1 | tee "$out/writer_stages.json"
python3 benchmarks/video_throughput.py --config=6b --make_video=1920x1080,20,30 \
  --workdir="$deps/work" | tee "$out/video_throughput.log" | tail -1 > "$out/video_throughput.json"
cat "$out/video_throughput.json"
