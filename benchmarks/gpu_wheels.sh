#!/usr/bin/env bash
# Wheels that the GPU machine lacks, for `benchmarks/gpu_check.sh` there. That machine reaches no
# package index; its python3 (3.12) has jax, flax, optax, orbax, Pillow and torch, and the video
# path also needs PyAV, decord, zlib-ng and ml_collections. Run here, then carry the folder:
#
#     bash benchmarks/gpu_wheels.sh        # → .device_wheels/ (ignored by git), ~48 MiB
#     device run: bash benchmarks/gpu_check.sh   with carry [".device_wheels"]
#
# The device tool carries 64 MiB at most, the working tree included.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device_wheels
rm -rf "$out"
mkdir -p "$out"
python3 -m pip download --quiet --dest "$out" --no-deps --only-binary=:all: \
  --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
  av==18.1.0 decord==0.6.0 ml-collections zlib-ng
du -sh "$out"
ls "$out"
