#!/bin/bash
# Run under srun, one task per node: prints what this node is, as one JSON line.
set -euo pipefail
ib0=$(ip -4 -o addr show dev ib0 | awk '{print $4}' | cut -d/ -f1)
mgmt=$(getent hosts "$(hostname)" | awk '{print $1}')
printf '{"hostname": "%s", "slurmd_nodename": "%s", "ib0": "%s", "mgmt": "%s", "nodeid": "%s", "procid": "%s", "gpus_on_node": "%s", "cuda_visible_devices": "%s", "nodelist": "%s"}\n' \
    "$(hostname)" "${SLURMD_NODENAME:-}" "$ib0" "$mgmt" "${SLURM_NODEID:-}" "${SLURM_PROCID:-}" \
    "${SLURM_GPUS_ON_NODE:-}" "${CUDA_VISIBLE_DEVICES:-}" "${SLURM_JOB_NODELIST:-}"
