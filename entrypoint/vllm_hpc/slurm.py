"""The job's Slurm environment, read once into a frozen dataclass.

Outside Slurm (no SLURM_JOB_ID) the job is a single local node.

Inside a step (srun), the step's own node list, node count and tasks per node are what
count: SLURM_JOB_NODELIST and SLURM_JOB_NUM_NODES stay job-wide inside a step (an
`srun -N2` in a 4-node allocation still sees 4), while SLURM_NODEID is relative to the
step (srun(1), OUTPUT ENVIRONMENT VARIABLES). This node's name is SLURMD_NODENAME, the
name Slurm knows it by, which differs from gethostname() where slurm.conf sets
NodeHostname (cloud and many vendor clusters).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from .errors import ConfigError, LaunchError
from .hostlist import parse_hostlist

# Logical name -> the Slurm variables that may hold it, first found wins.
SLURM_VARIABLES: dict[str, tuple[str, ...]] = {
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "node_name": ("SLURMD_NODENAME",),
    "node_rank": ("SLURM_NODEID",),
    "step_nodelist": ("SLURM_STEP_NODELIST",),
    "step_num_nodes": ("SLURM_STEP_NUM_NODES",),
    "step_tasks_per_node": ("SLURM_STEP_TASKS_PER_NODE",),
    "num_nodes": ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"),
    "nodelist": ("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
    "gpus_on_node": ("SLURM_GPUS_ON_NODE",),
    "end_time": ("SLURM_JOB_END_TIME",),
    "job_name": ("SLURM_JOB_NAME",),
    "submit_dir": ("SLURM_SUBMIT_DIR",),
    "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
    "restart_count": ("SLURM_RESTART_COUNT",),
    "array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "array_task_id": ("SLURM_ARRAY_TASK_ID",),
}


@dataclass(frozen=True)
class SlurmEnv:
    """What this node knows about its job."""

    in_slurm: bool
    job_id: str
    node_rank: int
    nodes: tuple[str, ...]  # the step's nodes inside a step, else the job's
    hostname: str  # this node's name in Slurm (SLURMD_NODENAME), else the short hostname
    gpus_on_node: int
    gpu_source: str  # which variable gave gpus_on_node, for messages and the plan
    end_time: int | None  # epoch seconds, None where unknown or unlimited
    job_name: str
    # Tells one start of the job's step from another (requeue, a second srun), so that
    # workers never follow a leader address left by an earlier start.
    generation: str = "0"
    in_step: bool = False  # inside an srun step (SLURM_STEP_ID), not the batch script
    tasks_per_node: int = 1  # the most tasks of this step on one node
    tasks_per_node_raw: str = ""
    host: str = ""  # gethostname(), short: for URLs; equals hostname on most clusters
    array_id: str | None = None  # "8125_3" for a task of an array job, as squeue shows it

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
    items = [item.strip() for item in value.split(",") if item.strip()]
    if any(item in ("-1", "NoDevFiles") for item in items):
        return 0
    # A CUDA process uses only the first MIG instance listed, however many are.
    if any(item.startswith("MIG-") for item in items):
        return 1
    return len(items)


def parse_tasks_per_node(value: str) -> int:
    """The largest count in Slurm's tasks-per-node form, e.g. "2(x3),1" -> 2."""
    counts = []
    for part in value.split(","):
        head = part.split("(")[0].strip()
        if not head.isdigit():
            raise ConfigError(f"cannot read tasks per node from {value!r}", "run under srun in the job")
        counts.append(int(head))
    return max(counts) if counts else 1


def count_gpus(env: Mapping[str, str], in_slurm: bool, detected_gpus: int | None) -> tuple[int, str]:
    """GPUs this process may use, and which variable said so.

    Inside Slurm only what Slurm gave counts: nvidia-smi on a node without device
    constraints sees other jobs' GPUs too. Where SLURM_GPUS_ON_NODE and
    CUDA_VISIBLE_DEVICES disagree, the smaller is what the process can really use.
    """
    found: list[tuple[int, str]] = []
    gpus_slurm = _parse_int(env, "gpus_on_node")
    if gpus_slurm is not None:
        found.append((gpus_slurm, "SLURM_GPUS_ON_NODE"))
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        found.append((count_cuda_visible_devices(cvd), "CUDA_VISIBLE_DEVICES"))
    if found:
        gpus, source = min(found)
        if len({count for count, _ in found}) > 1:
            source = f"{source}, the smaller of SLURM_GPUS_ON_NODE={gpus_slurm} and CUDA_VISIBLE_DEVICES={cvd}"
        return gpus, source
    if in_slurm:
        return 0, "Slurm allocated none: no SLURM_GPUS_ON_NODE or CUDA_VISIBLE_DEVICES"
    if detected_gpus is not None:
        return detected_gpus, "nvidia-smi"
    return 0, "none found"


def read_slurm_env(env: Mapping[str, str], hostname: str, detected_gpus: int | None) -> SlurmEnv:
    """Read the Slurm view of this node from ``env``.

    ``detected_gpus`` is what the machine itself reports (e.g. nvidia-smi), the
    fallback for the GPU count outside Slurm; None where not probed.
    """
    short_host = hostname.split(".")[0]
    job_id = _first(env, "job_id")
    gpus, source = count_gpus(env, job_id is not None, detected_gpus)
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
            host=short_host,
        )

    name = _first(env, "node_name") or short_host
    in_step = _first(env, "step_id") is not None
    list_name, count_name = ("step_nodelist", "step_num_nodes") if _first(env, "step_nodelist") else ("nodelist", "num_nodes")
    raw_nodelist = _first(env, list_name)
    nodes = tuple(parse_hostlist(raw_nodelist)) if raw_nodelist else (name,)
    num_nodes = _parse_int(env, count_name, minimum=1)
    if num_nodes is not None and num_nodes != len(nodes):
        var = next(v for v in SLURM_VARIABLES[count_name] if env.get(v))
        raise ConfigError(
            f"{var}={num_nodes} but the node list {raw_nodelist!r} names {len(nodes)} nodes",
            "run inside a consistent Slurm allocation",
        )
    # This node's place is where its Slurm name stands in the list; SLURM_NODEID (relative
    # to the step) is only the fallback for a name the list does not hold, which
    # check_launch refuses for serve.
    rank = nodes.index(name) if name in nodes else (_parse_int(env, "node_rank") or 0)
    if rank >= len(nodes):
        raise ConfigError(f"SLURM_NODEID={rank} but the job has {len(nodes)} nodes", "run under srun in the job")
    raw_tasks = _first(env, "step_tasks_per_node") or ""
    end_time = _parse_int(env, "end_time")
    return SlurmEnv(
        in_slurm=True,
        job_id=job_id,
        node_rank=rank,
        nodes=nodes,
        hostname=name,
        gpus_on_node=gpus,
        gpu_source=source,
        end_time=end_time or None,
        job_name=_first(env, "job_name") or "vllm-hpc",
        generation=f"{_first(env, 'restart_count') or 0}.{_first(env, 'step_id') or 0}",
        in_step=in_step,
        tasks_per_node=parse_tasks_per_node(raw_tasks) if raw_tasks else 1,
        tasks_per_node_raw=raw_tasks,
        host=short_host,
        array_id=f"{_first(env, 'array_job_id')}_{_first(env, 'array_task_id')}" if _first(env, "array_task_id") else None,
    )


def check_launch(slurm: SlurmEnv) -> None:
    """Refuse launches that cannot form one server: every node of the step must run
    ``serve`` exactly once, from inside the step. Pure."""
    if not slurm.in_slurm:
        return
    shown = ", ".join(slurm.nodes)
    if slurm.hostname not in slurm.nodes:
        raise LaunchError(
            f"this host ({slurm.hostname}) is not one of the job's nodes ({shown})",
            "run serve on the job's nodes through srun (the sbatch scripts in slurm/ do), not on a login node or in an salloc shell",
        )
    if slurm.num_nodes > 1 and not slurm.in_step:
        raise LaunchError(
            f"a {slurm.num_nodes}-node serve is running outside any srun step (the batch script), so the other nodes never start",
            "start it with srun --ntasks-per-node=1, as the sbatch scripts in slurm/ do",
        )
    if slurm.tasks_per_node > 1:
        raise LaunchError(
            f"{slurm.tasks_per_node} tasks of this step run on one node (SLURM_STEP_TASKS_PER_NODE={slurm.tasks_per_node_raw}),"
            " but serve must run exactly once per node",
            "start it with srun --nodes=N --ntasks=N --ntasks-per-node=1 (the sbatch scripts do; --ntasks-per-node on"
            " the sbatch line does not matter to them)",
        )


def local_hostname() -> str:
    return socket.gethostname()
