#!/usr/bin/env bash
# GPU verification from binaries built elsewhere: no Rust toolchain and no network needed on
# the GPU machine, only the `pagedrt` binary and the CUDA 13 driver/NVRTC/cuBLAS libraries.
#
#   cargo build --release            # on the build machine
#   scripts/gpu-check.sh [BINARY] [OUT_DIR]
#
# Runs, in this order, each with a time limit so the whole stays under 5 minutes:
#   1. pagedrt doctor --compile-kernels   (libraries, devices, every kernel compiled for the GPU)
#   2. pagedrt doctor --selftest --full   (every kernel vs its CPU twin / float64 reference)
#   3. pagedrt doctor --engine-check      (the CUDA engine's greedy tokens vs the CPU engine's)
#   4. pagedrt bench kernels              (copy bandwidth, decode attention, paging, prefill)
#   5. pagedrt bench throughput --device cuda (SmolLM2-135M shape, dummy weights, f32)
# Results (text and JSON) go to OUT_DIR; the exit code is non-zero if any step failed.
set -uo pipefail
BIN=${1:-target/release/pagedrt}
OUT=${2:-gpu-check-out}
mkdir -p "$OUT"
status=0
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > >(tee "$OUT/$name.txt") 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" = 0 ] || status=1
}
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
step doctor 60 "$BIN" doctor --compile-kernels --json "$OUT/doctor.json"
step selftest 120 "$BIN" doctor --selftest --full --json "$OUT/selftest.json"
step engine-check 90 "$BIN" doctor --engine-check --json "$OUT/engine-check.json"
step bench-kernels 90 "$BIN" bench kernels --json "$OUT/bench-kernels.json"
step throughput 60 "$BIN" bench throughput --device cuda --model dummy:smollm2-135m \
    --num-prompts 256 --input-len 128 --output-len 128 --ignore-eos --quiet \
    --json "$OUT/throughput.json"
exit $status
