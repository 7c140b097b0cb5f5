#!/usr/bin/env bash
# Wheels that the GPU machine lacks, for `benchmarks/gpu_video.sh` there. That machine reaches no
# package index and its python3 has jax, flax, optax, orbax and torch; the video path also needs
# PyAV, decord, zlib-ng, ml_collections and (if absent) Pillow. Run here, then carry the folder:
#
#     bash benchmarks/gpu_wheels.sh        # → .device_wheels/ (ignored by git), ~61 MiB
#     device run: bash benchmarks/gpu_video.sh   with carry [".device_wheels"]
#
# PyAV's abi3 wheel serves Python 3.11 and later; the others are per version (3.11, 3.12; zlib-ng
# also 3.13). The device tool carries 64 MiB at most: a third Pillow would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device_wheels
rm -rf "$out"
mkdir -p "$out"
get() {  # get PYTHON_VERSION PACKAGE...
  python3 -m pip download --quiet --dest "$out" --no-deps --only-binary=:all: \
    --python-version "$1" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 "${@:2}"
}
get 3.11 av==18.1.0 \
  decord==0.6.0 ml-collections pillow zlib-ng
get 3.12 pillow zlib-ng
get 3.13 zlib-ng
du -sh "$out"
ls "$out"
