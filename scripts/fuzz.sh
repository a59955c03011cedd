#!/usr/bin/env bash
# Runs every cargo-fuzz target of runtime/fuzz for SECONDS each, two at a time (the machines
# here have two cores), from the committed seeds, and fails on the first crash, hang (10 s
# per input) or input that needs more than 2 GiB.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default 60 s, every target: CI's smoke run)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; .ci/run installs it). It runs on the
# stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the sanitizer flags nightly would.
# A finding is kept under target/fuzz-artifacts/TARGET/ with the log; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir runtime/fuzz TARGET target/fuzz-artifacts/TARGET/crash-...
# The corpus each run grows stays under target/fuzz-corpus/ (not committed; the seeds are).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1
FUZZ=runtime/fuzz
if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^pagedrt-fuzz$')
fi
if [ $# -gt 0 ]; then
    for t in "${TARGETS[@]}"; do cargo fuzz build --fuzz-dir "$FUZZ" -O "$t"; done
else
    cargo fuzz build --fuzz-dir "$FUZZ" -O
fi
BIN="$FUZZ/target/x86_64-unknown-linux-gnu/release"
mkdir -p target/fuzz-corpus target/fuzz-artifacts

run_one() {
    local t=$1
    local corpus="target/fuzz-corpus/$t" art="target/fuzz-artifacts/$t"
    mkdir -p "$corpus" "$art"
    local seeds=()
    [ -d "$FUZZ/seeds/$t" ] && seeds=("$FUZZ/seeds/$t")
    if "$BIN/$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$art/" "$corpus" "${seeds[@]}" >"$art/log" 2>&1; then
        echo "fuzz $t: ${SECONDS_EACH}s, $(grep -Eo 'Done [0-9]+ runs' "$art/log" | tail -1), no finding"
    else
        echo "fuzz $t: FINDING (see $art/log)"
        tail -30 "$art/log"
        return 1
    fi
}

status=0
for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
    run_one "${TARGETS[i]}" &
    a=$!
    b=
    if [ $((i + 1)) -lt ${#TARGETS[@]} ]; then
        run_one "${TARGETS[i + 1]}" &
        b=$!
    fi
    wait "$a" || status=1
    [ -z "$b" ] || wait "$b" || status=1
done
exit $status
