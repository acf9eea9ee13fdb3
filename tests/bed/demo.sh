#!/usr/bin/env bash
# The quick start's main job, on this machine alone (no GPU, Slurm or Apptainer needed):
# generate a tiny model, serve it with `vllm-hpc serve` (a CPU build of vLLM), wait until
# it answers a completion, send one chat message, and stop the server.
#
#   bash tests/bed/demo.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
model="${1:-/var/cache/vllm-hpc-bed/tiny-model}"
bin=.venv/bin
[ -x "$bin/vllm-hpc" ] || { echo "demo: no .venv yet; run 'make demo' (it creates it)" >&2; exit 3; }

"$bin/python" tests/bed/tiny_model.py "$model"

# A CPU build of vLLM: a small KV cache keeps memory low.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_TARGET_DEVICE="${VLLM_TARGET_DEVICE:-cpu}"

"$bin/vllm-hpc" serve --model "$model" --served-model-name tiny --interface lo --host 127.0.0.1 --max-model-len 512 &
server=$!
stop_server() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop_server EXIT

job="local-$server"
"$bin/vllm-hpc" wait "$job" --timeout 600
echo
echo "--- vllm-hpc chat $job \"Hello! What can you do?\""
"$bin/vllm-hpc" chat "$job" "Hello! What can you do?" --max-tokens 24 --json
echo "--- demo done: the tiny model has random weights, so its words are noise; the protocol is real"
