"""`vllm-hpc doctor`: a preflight of this node, each check a line with what to do."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import VllmHpcError
from .jobfiles import make_private_dir
from .network import choose_interface, port_is_free, read_default_route, read_interfaces
from .plan import block_ports, port_block, ray_tmpdir_for
from .settings import read_settings
from .slurm import local_hostname, read_slurm_env


def _check(name: str, status: str, detail: str, fix: str = "") -> dict[str, Any]:
    return {"check": name, "status": status, "detail": detail, "fix": fix}


def run_checks(env: dict[str, str], model: str | None, interface: str | None) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    try:
        settings = read_settings(env)
        slurm = read_slurm_env(env, local_hostname(), None)
    except VllmHpcError as err:
        return [_check("environment", "fail", err.problem, err.fix or "")]
    where = f"job {slurm.job_id}, node {slurm.hostname} (rank {slurm.node_rank} of {slurm.num_nodes})" if slurm.in_slurm else f"{slurm.hostname}, outside Slurm"
    checks.append(_check("slurm", "ok", where))

    if slurm.gpus_on_node > 0:
        checks.append(_check("gpus", "ok", f"{slurm.gpus_on_node} GPU(s) from {slurm.gpu_source}"))
    elif slurm.num_nodes > 1:
        checks.append(_check("gpus", "fail", f"no GPUs visible ({slurm.gpu_source})", "submit with --gpus-per-node=N"))
    else:
        checks.append(_check("gpus", "warn", f"no GPUs visible ({slurm.gpu_source})", "a CPU build of vLLM is needed without GPUs"))

    ip = None
    try:
        choice = choose_interface(read_interfaces(), interface or settings.interface, read_default_route())
        ip = choice.ip
        checks.append(_check("network", "ok", f"{choice.interface} {choice.ip} ({choice.reason})"))
    except VllmHpcError as err:
        checks.append(_check("network", "fail", err.problem, err.fix or ""))

    ib = Path("/sys/class/infiniband")
    devices = sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []
    if devices and Path("/dev/infiniband").is_dir():
        checks.append(_check("infiniband", "ok", f"devices {', '.join(devices)}; /dev/infiniband present"))
    elif devices:
        checks.append(_check("infiniband", "warn", "HCAs present but /dev/infiniband is missing", "do not use apptainer --contain; bind /dev/infiniband"))
    else:
        checks.append(_check("infiniband", "warn", "no InfiniBand devices: NCCL will use TCP sockets between nodes", "expected on Ethernet-only clusters"))

    if ip:
        first = port_block(slurm.job_id, settings.port_base)
        busy = [f"{name} {port}" for name, port in block_ports(first).items() if name not in ("ray_min_worker", "ray_max_worker") and not port_is_free(ip, port)]
        if busy:
            checks.append(_check("ports", "fail", f"in use on {ip}: {', '.join(busy)}", "set VLLM_HPC_PORT_BASE to a free block of 100 ports"))
        else:
            checks.append(_check("ports", "ok", f"block {first}-{first + 99} free on {ip}"))

    try:
        tmpdir = ray_tmpdir_for(settings, slurm.job_id)
        checks.append(_check("ray-tmpdir", "ok", f"{tmpdir} ({len(tmpdir)} characters)"))
    except VllmHpcError as err:
        checks.append(_check("ray-tmpdir", "fail", err.problem, err.fix or ""))

    try:
        probe = make_private_dir(settings.home / "jobs")
        marker = probe / f".doctor-{slurm.hostname}-{os.getpid()}"
        marker.write_text(str(time.time()))
        marker.unlink()
        checks.append(_check("job-dir", "ok", f"{probe} writable, mode 0700 (must be shared by all nodes of a job)"))
    except OSError as err:
        checks.append(_check("job-dir", "fail", f"{settings.home}: {err.strerror}", "set VLLM_HPC_HOME to a writable shared directory"))

    if model:
        path = Path(model).expanduser()
        if (path / "config.json").is_file() and os.access(path, os.R_OK | os.X_OK):
            checks.append(_check("model", "ok", f"{path} readable with config.json"))
        elif path.is_dir():
            checks.append(_check("model", "fail", f"{path} has no config.json", "point --model at the directory holding config.json"))
        else:
            checks.append(_check("model", "fail", f"{path} is not readable on {slurm.hostname}", "put the model on a file system every node mounts"))

    for module in ("vllm", "ray"):
        found = importlib.util.find_spec(module) is not None
        checks.append(_check(module, "ok" if found else "warn", "importable" if found else "not installed here", "" if found else "run inside the vllm-hpc image"))

    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    inside = bool(env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER"))
    if inside:
        checks.append(_check("apptainer", "ok", f"running inside image {env.get('APPTAINER_CONTAINER') or env.get('SINGULARITY_CONTAINER')}"))
    elif apptainer:
        checks.append(_check("apptainer", "ok", apptainer))
    else:
        checks.append(_check("apptainer", "warn", "apptainer not found on PATH", "load the site's apptainer module to run the image"))
    return checks


def render_checks(checks: list[dict[str, Any]]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for c in checks:
        line = f"{marks[c['status']]} {c['check']:<11} {c['detail']}"
        if c["fix"] and c["status"] != "ok":
            line += f"  -> {c['fix']}"
        lines.append(line)
    return "\n".join(lines)


def fabric_test(env: dict[str, str], interface: str | None, timeout_s: float) -> dict[str, Any] | None:
    """`doctor --fabric` on this node: meet the other nodes of the step at the leader's
    fabric address (published in the job directory) and measure. The leader returns the
    figures; the others None. Raises a VllmHpcError naming what failed."""
    from . import fabric, jobfiles
    from .serve import wait_for_published
    from .slurm import check_launch
    from .supervisor import Supervisor, stderr_reporter

    settings = read_settings(env)
    slurm = read_slurm_env(env, local_hostname(), None)
    check_launch(slurm)
    choice = choose_interface(read_interfaces(), interface or settings.interface, read_default_route())
    reporter = stderr_reporter(f"{slurm.hostname}/fabric")
    published = str(settings.home / "jobs" / slurm.job_id / "fabric-leader.json")
    started = time.time()
    leader_ip = choice.ip
    if slurm.node_rank == 0:
        jobfiles.write_json(published, {"ip": choice.ip, "hostname": slurm.hostname, "run": slurm.generation, "published_epoch": started})
    else:
        leader = wait_for_published(
            Supervisor(reporter), published, slurm.generation, started,
            f"leader {slurm.nodes[0]} to publish its fabric address", timeout_s,
            "run doctor --fabric under srun on every node of the job, with VLLM_HPC_HOME on a shared file system",
        )  # fmt: skip
        leader_ip = str(leader["ip"])
    import torch

    cuda_gpus = slurm.gpus_on_node if torch.cuda.is_available() else 0
    block = port_block(slurm.job_id, settings.port_base)
    plan = fabric.plan_fabric(slurm.node_rank, slurm.nodes, leader_ip, block, choice.interface, choice.ip, cuda_gpus, timeout_s)
    reporter.say(f"fabric test over {choice.interface} ({choice.ip}), {plan.backend}, meeting at {leader_ip}:{plan.port}")
    return fabric.run(plan)
