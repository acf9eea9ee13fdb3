#!/bin/bash
# The peers' way of forming a Ray cluster on Slurm, for the benchmark's baseline rows.
# Run under srun, one task per node. PEER_MODE:
#   fixed-sleep  head first, then the workers after a fixed sleep of 10 s plus 5 s per
#                worker rank, as launch scripts that `sleep` between steps do;
#   poll-5s      workers start at once; the driver polls the node list every 5 s;
#   ray-default  Ray's own floor with `ray start`'s default options: head and workers
#                start at once (a worker waits for the head's GCS), and the node table
#                is read every 0.25 s through Ray's GCS client, without a driver;
#   ray-trimmed  the same, started as vllm-hpc starts Ray: its head options (no
#                dashboard, no autoscaler monitor) and `ray start` through
#                vllm_hpc.raystart on every node: the floor vllm-hpc is held to.
# The peers' heads start with Ray's defaults, as their launch scripts do.
# Writes {"last_task_start": epoch, "joined": epoch} to PEER_RESULT when the driver sees
# every node. Needs RAY_BIN, RAY_PYTHON, RAYSTART, HEAD_IP, RAY_PORT, PEER_MODE, PEER_RESULT.
set -euo pipefail
start=$(date +%s.%N)
ip=$(ip -4 -o addr show dev ib0 | awk '{print $4}' | cut -d/ -f1)
starts="$PEER_RESULT.starts"
echo "$start" >> "$starts"
common=(--node-ip-address "$ip" --num-gpus "${SLURM_GPUS_ON_NODE:-0}"
        --temp-dir "/tmp/peer-$SLURM_JOB_ID" --disable-usage-stats --block)
ray=("$RAY_BIN")
if [[ $PEER_MODE == ray-trimmed ]]; then read -ra ray <<< "$RAYSTART"; fi
if [[ $SLURM_NODEID == 0 ]]; then
    head=()
    if [[ $PEER_MODE == ray-trimmed ]]; then head=(--include-dashboard=false --no-monitor); fi
    "${ray[@]}" start --head --port "$RAY_PORT" "${head[@]}" "${common[@]}" &
    interval=0.25
    if [[ $PEER_MODE == poll-5s ]]; then interval=5; fi
    "$RAY_PYTHON" - "$ip" "$RAY_PORT" "$SLURM_JOB_NUM_NODES" "$interval" "$starts" "$PEER_RESULT" "$PEER_MODE" <<'PY'
import json, sys, time
ip, port, want, interval, starts, result, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
if mode.startswith("ray-"):
    import socket
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    # As vllm-hpc's leader does: the client once the GCS port answers (a client made
    # before that becomes usable 0.7-1.5 s after the port opens, on the idle bed).
    while True:
        try:
            socket.create_connection((ip, int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    while True:
        try:
            client = GcsClient(address=f"{ip}:{port}")
            break
        except Exception:
            time.sleep(0.1)
    alive = lambda: sum(1 for n in client.get_all_node_info(timeout=5).values() if n.state == GcsNodeInfo.ALIVE)
else:
    import ray
    while True:
        try:
            ray.init(address=f"{ip}:{port}", _node_ip_address=ip, logging_level="ERROR")
            break
        except Exception:
            time.sleep(0.5)
    alive = lambda: len([n for n in ray.nodes() if n["Alive"]])
while alive() < want:
    time.sleep(interval)
joined = time.time()
last = max(float(x) for x in open(starts).read().split())
json.dump({"last_task_start": last, "joined": joined}, open(result + ".part", "w"))
import os; os.replace(result + ".part", result)
PY
    wait
else
    if [[ $PEER_MODE == fixed-sleep ]]; then sleep $((10 + 5 * (SLURM_NODEID - 1))); fi
    exec "${ray[@]}" start --address "$HEAD_IP:$RAY_PORT" "${common[@]}"
fi
