#!/usr/bin/env bash
# N `pagedrt serve` replicas behind `vllm-router` on this machine, for testing a fleet.
#
#   scripts/fleet.sh N [-- extra arguments for every `pagedrt serve`]
#
# In the extra arguments `{i}` becomes the replica's index (`--step-log steps{i}.jsonl`).
#
# Replica i (0-based) serves on 127.0.0.1:$((REPLICA_PORT + i)) and publishes its KV-cache
# events on tcp://127.0.0.1:$((EVENTS_PORT + i)); the router listens on 127.0.0.1:$PORT and
# routes by POLICY. Everything runs in the foreground until Ctrl-C (or SIGTERM), then stops;
# logs go to $LOG_DIR. Settings (environment):
#   PAGEDRT       the binary                   (default target/release/pagedrt)
#   VLLM_ROUTER   the router                   (default: vllm-router on PATH; pip install
#                                               vllm-router==0.1.17)
#   MODEL         --model of every replica     (default: the default model)
#   NAME          --served-model-name          (default: smollm2-135m-instruct)
#   POLICY        kv_aware, cache_aware, round_robin, power_of_two  (default kv_aware)
#   PORT          the router's port            (default 8000)
#   REPLICA_PORT  the first replica's port     (default 8100)
#   EVENTS_PORT   the first replica's events   (default 5557)
#   METRICS_PORT  the router's own Prometheus port  (default 29000, the router's)
#   BLOCK_SIZE    KV page size, replicas' and the router's  (default 16)
#   THREADS       CPU threads per replica      (default: the cores shared out, at least 1)
#   LOG_DIR       where the logs go            (default fleet-logs)
set -euo pipefail
N=${1:?usage: scripts/fleet.sh N [-- pagedrt serve arguments]}
shift
[ "${1:-}" = "--" ] && shift
case "$N" in '' | *[!0-9]* | 0) echo "N must be a positive number, got '$N'" >&2; exit 2 ;; esac
PAGEDRT=${PAGEDRT:-target/release/pagedrt}
VLLM_ROUTER=${VLLM_ROUTER:-vllm-router}
NAME=${NAME:-smollm2-135m-instruct}
POLICY=${POLICY:-kv_aware}
PORT=${PORT:-8000}
REPLICA_PORT=${REPLICA_PORT:-8100}
EVENTS_PORT=${EVENTS_PORT:-5557}
METRICS_PORT=${METRICS_PORT:-29000}
BLOCK_SIZE=${BLOCK_SIZE:-16}
THREADS=${THREADS:-$(($(nproc) / N > 0 ? $(nproc) / N : 1))}
LOG_DIR=${LOG_DIR:-fleet-logs}
[ -x "$PAGEDRT" ] || { echo "$PAGEDRT not found: cargo build --release" >&2; exit 1; }
command -v "$VLLM_ROUTER" >/dev/null || {
    echo "$VLLM_ROUTER not found: pip install vllm-router==0.1.17 (or set VLLM_ROUTER)" >&2
    exit 1
}
mkdir -p "$LOG_DIR"

PIDS=()
stop() {
    trap - INT TERM EXIT
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

wait_health() {  # wait_health PORT PID WHAT
    for _ in $(seq 1 600); do
        curl -sf "127.0.0.1:$1/health" >/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { echo "$3 exited: see $LOG_DIR" >&2; exit 1; }
        sleep 0.5
    done
    echo "$3 did not start: see $LOG_DIR" >&2
    exit 1
}

MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")
URLS=()
SOURCES=()
for i in $(seq 0 $((N - 1))); do
    port=$((REPLICA_PORT + i))
    events="tcp://127.0.0.1:$((EVENTS_PORT + i))"
    RAYON_NUM_THREADS=$THREADS "$PAGEDRT" serve --port "$port" --served-model-name "$NAME" \
        "${MODEL_ARGS[@]}" --block-size "$BLOCK_SIZE" --kv-events-endpoint "$events" \
        "${@//\{i\}/$i}" >"$LOG_DIR/replica$i.log" 2>&1 &
    PIDS+=($!)
    URLS+=("http://127.0.0.1:$port")
    SOURCES+=(--kv-event-source "http://127.0.0.1:$port=$events")
    echo "replica $i: http://127.0.0.1:$port, KV events on $events ($THREADS threads)"
done
for i in $(seq 0 $((N - 1))); do
    wait_health $((REPLICA_PORT + i)) "${PIDS[$i]}" "replica $i"
done

ROUTER_ARGS=(--host 127.0.0.1 --port "$PORT" --worker-urls "${URLS[@]}" --policy "$POLICY"
    --prometheus-host 127.0.0.1 --prometheus-port "$METRICS_PORT")
if [ "$POLICY" = kv_aware ]; then
    ROUTER_ARGS+=("${SOURCES[@]}" --kv-event-block-size "$BLOCK_SIZE" --kv-event-model "$NAME")
fi
echo "$VLLM_ROUTER ${ROUTER_ARGS[*]}"
"$VLLM_ROUTER" "${ROUTER_ARGS[@]}" >"$LOG_DIR/router.log" 2>&1 &
PIDS+=($!)
wait_health "$PORT" "${PIDS[-1]}" "vllm-router"
echo "fleet of $N up: http://127.0.0.1:$PORT ($POLICY); Ctrl-C stops it"
wait -n "${PIDS[@]}" || true
echo "a process of the fleet exited: see $LOG_DIR" >&2
