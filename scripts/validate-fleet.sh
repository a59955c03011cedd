#!/usr/bin/env bash
# The fleet simulator against a real fleet on this machine (issue 27): 2 `pagedrt serve`
# replicas behind `vllm-router` (scripts/fleet.sh), each calibrated, on a held-out
# shared-prefix workload.
#
#   scripts/validate-fleet.sh [BINARY] [OUT_DIR] [ROUNDS]
#
# Settings (environment): VLLM_ROUTER (default vllm-router on PATH), POLICY (the router's
# policy for the held-out run: cache_aware, kv_aware, round_robin; default cache_aware),
# MODEL (--model of the replicas; default the default model).
#
# Each round, back to back:
# 1. Calibration: the fleet under round-robin routing, every replica's step log on, driven
#    through the router by the served calibration loads of `bench calibrate` at twice the
#    rate (so each replica sees what one calibrated server sees); then `bench calibrate
#    --from-steps` fits one cost model per replica.
# 2. Held-out: a fresh fleet under POLICY, `bench serve --dataset prefix-sharing` (4 groups of
#    a 256-word prefix, 64 words of the request's own, 32 tokens out, 120 requests at
#    3 req/s) through the router with --save-trace; the replicas' request counts from their
#    /metrics.
# 3. `simulate --replicas 2 --router POLICY` replays the trace with the two cost models,
#    raw and speed-normalized (each replica's `bench check-steps` ratio, averaged).
# Prints fleet throughput, median TTFT / TPOT and the per-replica split, real and simulated.
set -euo pipefail
B=${1:-target/release/pagedrt}
OUT=${2:-validate-fleet-out}
ROUNDS=${3:-2}
POLICY=${POLICY:-cache_aware}
ROUTER_PORT=${ROUTER_PORT:-8230}
REPLICA_PORT=${REPLICA_PORT:-8231}
EVENTS_PORT=${EVENTS_PORT:-5631}
PREFIX_WORDS=256
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

fleet_up() {  # fleet_up POLICY LOG_DIR STEP_LOG_PREFIX
    PAGEDRT="$B" POLICY=$1 LOG_DIR=$2 PORT=$ROUTER_PORT REPLICA_PORT=$REPLICA_PORT \
        EVENTS_PORT=$EVENTS_PORT METRICS_PORT=$((ROUTER_PORT + 100)) \
        bash scripts/fleet.sh 2 -- --step-log "$3{i}.jsonl" >"$2.fleet.log" 2>&1 &
    FLEET=$!
    for _ in $(seq 1 600); do
        grep -q "fleet of 2 up" "$2.fleet.log" 2>/dev/null && return 0
        kill -0 "$FLEET" 2>/dev/null || { cat "$2.fleet.log" >&2; exit 1; }
        sleep 0.5
    done
    echo "the fleet did not start (see $2.fleet.log)" >&2
    exit 1
}
fleet_down() { kill "$FLEET"; wait "$FLEET" 2>/dev/null || true; }
load() {  # load NAME NUM RATE DATASET IN OUT [extra args...]
    local name=$1 num=$2 rate=$3 dataset=$4 inl=$5 outl=$6
    shift 6
    "$B" bench serve --base-url "http://127.0.0.1:$ROUTER_PORT" --num-prompts "$num" \
        --request-rate "$rate" --dataset "$dataset" --input-len "$inl" --output-len "$outl" \
        --ignore-eos --quiet "$@" >"$OUT/$name.bench.log" 2>&1
}
served() {  # served PORT: requests the replica has finished
    curl -sf "127.0.0.1:$1/metrics" \
        | awk '/^pagedrt:e2e_request_latency_seconds_count/ {s += $2} END {print s + 0}'
}

for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r: calibration (round-robin, step logs)"
    fleet_up round_robin "$OUT/calib$r" "$OUT/calib$r.steps"
    load "calib1-$r" 60 1.4 random uniform:8:400 uniform:4:96 --seed 7
    load "calib2-$r" 100 8 random uniform:8:600 uniform:4:48 --seed 8
    load "calib3-$r" 96 inf random uniform:8:128 uniform:32:160 --seed 9
    fleet_down
    for i in 0 1; do
        "$B" bench calibrate --from-steps "$OUT/calib$r.steps$i.jsonl" \
            --out "$OUT/cost$r-$i.json" | tail -1
    done
    echo "== round $r: held-out shared-prefix workload ($POLICY)"
    fleet_up "$POLICY" "$OUT/held$r" "$OUT/held$r.steps"
    load "held$r" 120 3 prefix-sharing 64 32 --prefix-groups 4 --prefix-len "$PREFIX_WORDS" \
        --seed "$((100 + r))" --save-result "$OUT/held$r.real.json" \
        --save-trace "$OUT/held$r.trace.jsonl"
    echo "$(served "$REPLICA_PORT") $(served $((REPLICA_PORT + 1)))" >"$OUT/held$r.split"
    fleet_down
    ratios=()
    for i in 0 1; do
        "$B" bench check-steps --steps "$OUT/held$r.steps$i.jsonl" \
            --cost-model "$OUT/cost$r-$i.json" --json "$OUT/held$r.check$i.json" | tail -1
        ratios+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ratio'])" \
            "$OUT/held$r.check$i.json")")
    done
    scale=$(python3 -c "import sys; print(sum(map(float, sys.argv[1:])) / 2)" "${ratios[@]}")
    router=${POLICY//_/-}
    for kind in sim norm; do
        extra=()
        [ "$kind" = norm ] && extra=(--cost-scale "$scale")
        "$B" simulate --workload "trace:$OUT/held$r.trace.jsonl" --replicas 2 --router "$router" \
            --cost-model "$OUT/cost$r-0.json,$OUT/cost$r-1.json" --prefix-len "$PREFIX_WORDS" \
            --json "$OUT/held$r.$kind.json" --quiet "${extra[@]}" >/dev/null
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rs = range(1, rounds + 1)
pct = lambda x, y: 100 * (y - x) / x
figures = [("request throughput (req/s)", lambda d: d["request_throughput"]),
           ("median TTFT (ms)", lambda d: 1e3 * d["ttft_s"]["median"]),
           ("median TPOT (ms)", lambda d: 1e3 * d["tpot_s"]["median"])]
real = {r: json.load(open(f"{out}/held{r}.real.json")) for r in rs}
sims = {(r, k): json.load(open(f"{out}/held{r}.{k}.json")) for r in rs for k in ["sim", "norm"]}
prompt = [json.loads(l)["prompt_len"] for r in rs for l in open(f"{out}/held{r}.trace.jsonl")]
print(f"prompt tokens per request (server's count): mean {sum(prompt) / len(prompt):.1f}, "
      f"min {min(prompt)}, max {max(prompt)}")
print("| figure | real per round | simulated | error | speed-normalized | error |")
print("|---|---|---|---|---|---|")
for name, f in figures:
    xs = [f(real[r]) for r in rs]
    row = f"| {name} | {', '.join(f'{x:.3g}' for x in xs)} |"
    for k in ["sim", "norm"]:
        ys = [f(sims[(r, k)]) for r in rs]
        row += (f" {', '.join(f'{y:.3g}' for y in ys)} | "
                f"{', '.join(f'{pct(x, y):+.1f} %' for x, y in zip(xs, ys))} |")
    print(row)
for r in rs:
    a, b = map(float, open(f"{out}/held{r}.split").read().split())
    sim = [rep["request_share"] for rep in sims[(r, "sim")]["per_replica"]]
    print(f"round {r}: real split {a / (a + b):.3f} / {b / (a + b):.3f} "
          f"({a:.0f} / {b:.0f} requests), simulated {sim[0]:.3f} / {sim[1]:.3f}")
PY
