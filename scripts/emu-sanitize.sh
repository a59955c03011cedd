#!/usr/bin/env bash
# The CUDA emulator's tests with AddressSanitizer and UndefinedBehaviorSanitizer compiled into
# every emulated kernel and the emulator itself (PAGEDRT_EMU_SANITIZE=1, see
# kernels/src/cuda/emu/wrapper.rs): out-of-bounds global-memory accesses, use after free,
# integer overflow and other undefined behaviour in a kernel stop the run with a report.
# Builds into its own target folder (target/emu-sanitize), so the normal build is untouched.
#
#   scripts/emu-sanitize.sh            # the quick self-test, the emulator's checks, mutations
#   scripts/emu-sanitize.sh cuda_emu   # one test file
set -euo pipefail
cd "$(dirname "$0")/.."
export PAGEDRT_EMU_SANITIZE=1
export CARGO_TARGET_DIR=target/emu-sanitize
tests=("${@:-cuda_emu cuda_emu_checks cuda_emu_mutations}")
args=()
for t in ${tests[@]}; do args+=(--test "$t"); done
asan=$(${CXX:-c++} -print-file-name=libasan.so)
ubsan=$(${CXX:-c++} -print-file-name=libubsan.so)
bins=$(cargo test -p pagedrt-kernels --no-run "${args[@]}" 2>&1 \
    | tee /dev/stderr | sed -n 's/.*Executable .* (\(.*\))$/\1/p')
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for b in $bins; do
    echo "== $b (ASan + UBSan)"
    LD_PRELOAD="$asan:$ubsan" "$b"
done
