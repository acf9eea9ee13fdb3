"""The job's Slurm environment, read once into a frozen dataclass.

Outside Slurm (no SLURM_JOB_ID) the job is a single local node.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from .errors import ConfigError
from .hostlist import parse_hostlist

# Logical name -> the Slurm variables that may hold it, first found wins.
SLURM_VARIABLES: dict[str, tuple[str, ...]] = {
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "node_rank": ("SLURM_NODEID",),
    "num_nodes": ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"),
    "nodelist": ("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
    "gpus_on_node": ("SLURM_GPUS_ON_NODE",),
    "end_time": ("SLURM_JOB_END_TIME",),
    "job_name": ("SLURM_JOB_NAME",),
    "submit_dir": ("SLURM_SUBMIT_DIR",),
    "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
    "restart_count": ("SLURM_RESTART_COUNT",),
}


@dataclass(frozen=True)
class SlurmEnv:
    """What this node knows about its job."""

    in_slurm: bool
    job_id: str
    node_rank: int
    nodes: tuple[str, ...]
    hostname: str
    gpus_on_node: int
    gpu_source: str  # which variable gave gpus_on_node, for messages and the plan
    end_time: int | None  # epoch seconds, None where unknown or unlimited
    job_name: str
    # Tells one start of the job's step from another (requeue, a second srun), so that
    # workers never follow a leader address left by an earlier start.
    generation: str = "0"

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def leader(self) -> str:
        return self.nodes[0]

    def seconds_left(self, now: float) -> float | None:
        if self.end_time is None:
            return None
        return self.end_time - now


def _first(env: Mapping[str, str], name: str) -> str | None:
    for var in SLURM_VARIABLES[name]:
        value = env.get(var)
        if value not in (None, ""):
            return value
    return None


def _parse_int(env: Mapping[str, str], name: str, minimum: int = 0) -> int | None:
    raw = _first(env, name)
    if raw is None:
        return None
    # SLURM_GPUS_ON_NODE and friends can be "4" or "4(x2)"; the count is the first number.
    digits = raw.split("(")[0].strip()
    try:
        value = int(digits)
    except ValueError:
        var = next(v for v in SLURM_VARIABLES[name] if env.get(v))
        raise ConfigError(f"{var}={raw!r} is not a number", f"unset {var} or give it an integer") from None
    if value < minimum:
        var = next(v for v in SLURM_VARIABLES[name] if env.get(v))
        raise ConfigError(f"{var}={raw!r} is below {minimum}", f"unset {var} or fix its value")
    return value


def count_cuda_visible_devices(value: str) -> int:
    items = [item for item in value.split(",") if item.strip()]
    if any(item.strip() in ("-1", "NoDevFiles") for item in items):
        return 0
    return len(items)


def read_slurm_env(env: Mapping[str, str], hostname: str, detected_gpus: int | None) -> SlurmEnv:
    """Read the Slurm view of this node from ``env``.

    ``detected_gpus`` is what the machine itself reports (e.g. nvidia-smi), the last
    fallback for the GPU count; None where not probed.
    """
    short_host = hostname.split(".")[0]
    gpus_slurm = _parse_int(env, "gpus_on_node")
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if gpus_slurm is not None:
        gpus, source = gpus_slurm, "SLURM_GPUS_ON_NODE"
    elif cvd is not None:
        gpus, source = count_cuda_visible_devices(cvd), "CUDA_VISIBLE_DEVICES"
    elif detected_gpus is not None:
        gpus, source = detected_gpus, "nvidia-smi"
    else:
        gpus, source = 0, "none found"

    job_id = _first(env, "job_id")
    if job_id is None:
        return SlurmEnv(
            in_slurm=False,
            job_id=f"local-{os.getpid()}",
            node_rank=0,
            nodes=(short_host,),
            hostname=short_host,
            gpus_on_node=gpus,
            gpu_source=source,
            end_time=None,
            job_name="local",
        )

    raw_nodelist = _first(env, "nodelist")
    nodes = tuple(parse_hostlist(raw_nodelist)) if raw_nodelist else (short_host,)
    num_nodes = _parse_int(env, "num_nodes", minimum=1)
    if num_nodes is not None and num_nodes != len(nodes):
        raise ConfigError(
            f"SLURM_JOB_NUM_NODES={num_nodes} but the node list {raw_nodelist!r} names {len(nodes)} nodes",
            "run inside a consistent Slurm allocation",
        )
    rank = _parse_int(env, "node_rank")
    if rank is None:
        # Outside a step (e.g. in the batch script) the rank is where this host sits in the list.
        rank = nodes.index(short_host) if short_host in nodes else 0
    if rank >= len(nodes):
        raise ConfigError(f"SLURM_NODEID={rank} but the job has {len(nodes)} nodes", "run under srun in the job")
    end_time = _parse_int(env, "end_time")
    return SlurmEnv(
        in_slurm=True,
        job_id=job_id,
        node_rank=rank,
        nodes=nodes,
        hostname=short_host,
        gpus_on_node=gpus,
        gpu_source=source,
        end_time=end_time or None,
        job_name=_first(env, "job_name") or "vllm-hpc",
        generation=f"{_first(env, 'restart_count') or 0}.{_first(env, 'step_id') or 0}",
    )


def local_hostname() -> str:
    return socket.gethostname()
