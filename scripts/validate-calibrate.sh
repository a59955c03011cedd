#!/usr/bin/env bash
# Does the plain `pagedrt bench calibrate` predict a served run? (issue 27)
#
#   scripts/validate-calibrate.sh [BINARY] [OUT_DIR] [ROUNDS] [-- serve/calibrate args, e.g. --model dummy:smollm2-135m]
#
# Each round, as a new user would run it: `bench calibrate --out cost.json` (the default,
# served calibration), then `pagedrt serve` driven by `bench serve` with 200 requests at
# 4 req/s, random 128 in / 64 out (--save-trace), then `simulate --cost-model cost.json` on
# that workload twice: the same synthetic workload (`--workload random`, same seed and rate)
# and the trace of the real run (same arrivals and lengths); then once more speed-normalized
# (`--cost-scale` the served run's `bench check-steps` ratio: how much slower the machine ran
# than during its calibration). Prints the errors of request throughput, median TTFT and
# median TPOT per round and of the means over rounds.
set -euo pipefail
B=${1:-target/release/pagedrt}
OUT=${2:-validate-calibrate-out}
ROUNDS=${3:-3}
shift 3 2>/dev/null || shift $#
[ "${1:-}" = "--" ] && shift
EXTRA=("$@")
PORT=${PORT:-8127}
mkdir -p "$OUT"
WORKLOAD=(--request-rate 4 --input-len 128 --output-len 64)

for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r: bench calibrate"
    "$B" bench calibrate --out "$OUT/cost$r.json" "${EXTRA[@]}" 2>&1 | tail -2
    echo "== round $r: served run"
    "$B" serve --port "$PORT" --step-log "$OUT/steps$r.jsonl" "${EXTRA[@]}" >"$OUT/serve$r.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 240); do
        curl -sf "localhost:$PORT/health" >/dev/null && break
        sleep 0.5
    done
    "$B" bench serve --base-url "http://127.0.0.1:$PORT" --num-prompts 200 --dataset random \
        "${WORKLOAD[@]}" --ignore-eos --seed "$r" --quiet --save-result "$OUT/real$r.json" \
        --save-trace "$OUT/trace$r.jsonl" >"$OUT/bench$r.log" 2>&1
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    "$B" simulate --workload random --num-requests 200 "${WORKLOAD[@]}" --seed "$r" \
        --cost-model "$OUT/cost$r.json" --json "$OUT/sim$r.json" --quiet >/dev/null
    "$B" simulate --workload "trace:$OUT/trace$r.jsonl" --cost-model "$OUT/cost$r.json" \
        --json "$OUT/replay$r.json" --quiet >/dev/null
    # The machine's drift since the calibration: the served run's own steps against the model.
    "$B" bench check-steps --steps "$OUT/steps$r.jsonl" --cost-model "$OUT/cost$r.json" \
        --json "$OUT/check$r.json" | tail -1
    ratio=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ratio'])" "$OUT/check$r.json")
    "$B" simulate --workload "trace:$OUT/trace$r.jsonl" --cost-model "$OUT/cost$r.json" \
        --cost-scale "$ratio" --json "$OUT/norm$r.json" --quiet >/dev/null
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def one(path):
    v = json.load(open(path))
    return v[0] if isinstance(v, list) else v
figures = [("request throughput (req/s)", lambda d: d["request_throughput"]),
           ("output throughput (tok/s)", lambda d: d.get("output_throughput", d.get("output_token_throughput"))),
           ("median TTFT (ms)", lambda d: 1e3 * d["ttft_s"]["median"]),
           ("median TPOT (ms)", lambda d: 1e3 * d["tpot_s"]["median"])]
rs = range(1, rounds + 1)
pct = lambda x, y: 100 * (y - x) / x
print("drift (served steps / calibrated model) per round: " + ", ".join(
    f"{json.load(open(f'{out}/check{r}.json'))['ratio']:.3f}" for r in rs))
print("| figure | real per round | simulated (synthetic) | error | error of the means | "
      "simulated (trace replay) | error | error of the means | speed-normalized replay | error | error of the means |")
print("|---|---|---|---|---:|---|---|---:|---|---|---:|")
for name, f in figures:
    xs = [f(one(f"{out}/real{r}.json")) for r in rs]
    row = f"| {name} | {', '.join(f'{x:.3g}' for x in xs)} |"
    for kind in ["sim", "replay", "norm"]:
        ys = [f(one(f"{out}/{kind}{r}.json")) for r in rs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        row += (f" {', '.join(f'{y:.3g}' for y in ys)} | "
                f"{', '.join(f'{pct(x, y):+.1f} %' for x, y in zip(xs, ys))} | {pct(mx, my):+.1f} % |")
    print(row)
PY
