#!/bin/bash
# Run under srun, one task per node. Node 0 starts a Ray head on its ib0 address and
# writes the Ray cluster's nodes to $RAY_RESULT once all nodes of the job joined; the
# other nodes join the head over ib0. Everything stays up until the job is cancelled.
# Needs RAY_BIN (the ray program), RAY_PYTHON, HEAD_IP, RAY_PORT, RAY_RESULT.
set -euo pipefail
ip=$(ip -4 -o addr show dev ib0 | awk '{print $4}' | cut -d/ -f1)
common=(--node-ip-address "$ip" --num-cpus 1 --num-gpus "${SLURM_GPUS_ON_NODE:-0}"
        --disable-usage-stats --block)
if [[ $SLURM_NODEID == 0 ]]; then
    "$RAY_BIN" start --head --port "$RAY_PORT" --temp-dir /tmp/ray \
        --include-dashboard=false "${common[@]}" &
    "$RAY_PYTHON" "$(dirname "$0")/ray_nodes.py" "$ip" "$RAY_PORT" "$SLURM_JOB_NUM_NODES" \
        > "$RAY_RESULT.part"
    mv "$RAY_RESULT.part" "$RAY_RESULT"
    wait
else
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/$HEAD_IP/$RAY_PORT") 2>/dev/null && break
        sleep 0.2
    done
    exec "$RAY_BIN" start --address "$HEAD_IP:$RAY_PORT" "${common[@]}"
fi
