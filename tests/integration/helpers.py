"""Helpers for the integration layer: the CLI, local servers, process checks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VLLM_HPC = str(BIN / "vllm-hpc")
MODEL_CACHE = Path(os.environ.get("VLLM_HPC_BED_CACHE", "/var/cache/vllm-hpc-bed")) / "tiny-model"
# What a CPU build of vLLM needs to run here (see tests/bed/README.md).
CPU_VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
STANDIN_ENV = {"VLLM_HPC_SERVER_MODULE": "standin_vllm"}


# The vLLM the image ships; its OpenAI server logs "vLLM API server version X" at start.
SHIPPED_VLLM = "0.11.0"


def served_vllm_version(job_dir: Path) -> str:
    """The vLLM version the job's server logged (logs/<node>/server.log); "" if none."""
    for log in sorted(Path(job_dir).glob("logs/*/server.log")):
        match = re.search(r"vLLM API server version (\S+)", log.read_text(errors="replace"))
        if match:
            return match.group(1)
    return ""


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VLLM_HPC_", "VLLM_API_KEY", "RAY_"))}
    env.update(CPU_VLLM_ENV)
    env["VLLM_HPC_HOME"] = str(home)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = str(REPO / "tests/bed")
    # Several emulated nodes share this machine's memory: keep each Ray object store small.
    env["VLLM_HPC_RAY_START_ARGS"] = "--object-store-memory 200000000"
    env.update(extra)
    return env


def vllm_hpc(*args: str, env: dict[str, str], timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([VLLM_HPC, *args], env=env, capture_output=True, text=True, timeout=timeout, check=check)


class LocalServer:
    """`vllm-hpc serve` started as a user would, outside Slurm."""

    def __init__(self, home: Path, model: str, args: list[str], env_extra: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = base_env(home, **(env_extra or {}))
        self.port = free_port()
        self.log = home / "serve.stderr"
        home.mkdir(parents=True, exist_ok=True)
        argv = [VLLM_HPC, "serve", "--model", model, "--served-model-name", "tiny", "--interface", "lo",
                "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", "512", *args]
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.job = f"local-{self.process.pid}"
        self.job_dir = home / "jobs" / self.job

    def wait_ready(self, timeout: float = 400) -> dict:
        result = vllm_hpc("wait", self.job, "--timeout", str(timeout), "--json", env=self.env, timeout=timeout + 30)
        assert result.returncode == 0, f"{result.stderr}\n--- serve log:\n{self.log.read_text()[-3000:]}"
        return json.loads(result.stdout)

    def endpoint(self) -> dict:
        return json.loads((self.job_dir / "endpoint.json").read_text())

    def api_key(self) -> str:
        return (self.job_dir / "api-key").read_text().strip()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def stop_group(proc: subprocess.Popen, grace: float, kill_wait: float = 30) -> None:
    """Stop a process started with start_new_session=True and its group: SIGTERM, then
    SIGKILL if it has not ended after ``grace`` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=kill_wait)


def descendants_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.2)
    return alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def all_cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                pass
    return out


# ---- jobs on the emulated Slurm cluster -------------------------------------------

JOB_ROOT = Path("/var/tmp/vllm-hpc-tests")  # seen by every node and, by default, inside Apptainer


def job_home(name: str) -> Path:
    home = JOB_ROOT / f"{os.getpid()}-{name}"
    home.mkdir(parents=True, exist_ok=True)
    return home


def job_env(cluster, home: Path, image: str = "none", **extra: str) -> dict[str, str]:
    env = base_env(home, VLLM_HPC_IMAGE=image, **extra)
    env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    return env


def submit(cluster, script: str, sbatch_args: list[str], serve_args: list[str], env: dict[str, str], out: Path) -> int:
    argv = [*sbatch_args, f"--output={out}", f"--chdir={REPO}", str(REPO / "slurm" / script), *serve_args]
    return cluster.sbatch(argv, env=env)


def submit_standin_job(cluster, name: str, model: str, sbatch_args: list[str], serve_extra=(), **env_extra: str):
    """A multi-node job through slurm/multinode.sbatch with the stand-in as its server.

    Returns job id, environment, job home and output file."""
    home = job_home(name)
    env = job_env(cluster, home, **STANDIN_ENV)
    env.update(env_extra)  # may name another image (VLLM_HPC_IMAGE) or home
    out = home / "job.out"
    serve_args = ["--model", model, "--served-model-name", "tiny", *serve_extra]
    return submit(cluster, "multinode.sbatch", sbatch_args, serve_args, env, out), env, home, out


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


def wait_final(cluster, job: int, out: Path, timeout: float = 180) -> tuple[str, str, float]:
    """Until Slurm says the job ended: its final state, its output, and the seconds waited."""
    t0 = time.monotonic()
    state = cluster.wait_job(job, FINAL_STATES, timeout=timeout)
    return state, out.read_text(), time.monotonic() - t0


def cancel_job(cluster, job: int, timeout: float = 60) -> None:
    """scancel, then wait until no vllm-hpc, Ray or server process of any node is left."""
    cluster.slurm(["scancel", str(job)], check=False)
    wait_until("job processes gone", lambda: not any(serving_processes(cluster, n) for n in cluster.node_names), timeout)


def wait_ready(job: int, env: dict[str, str], out: Path, timeout: float = 180) -> dict:
    result = vllm_hpc("wait", str(job), "--timeout", str(timeout), "--json", env=env, timeout=timeout + 30)
    if result.returncode != 0:
        text = out.read_text()[-4000:] if out.exists() else "(no output)"
        raise AssertionError(f"job {job} not ready: {result.stderr}\n--- job output:\n{text}")
    return json.loads(result.stdout)


def job_processes(cluster, node: str) -> list[tuple[int, str]]:
    """Processes of a node other than its init and slurmd."""
    return [(pid, cmd) for pid, cmd in cluster.node_processes(node) if " _init " not in cmd and not cmd.startswith("slurmd ")]


SERVING_WORDS = ("vllm-hpc", "ray", "standin_vllm", "vllm.entrypoints", "VLLM::")


def serving_processes(cluster, node: str) -> list[tuple[int, str]]:
    """vllm-hpc, Ray and server processes of a node (not Slurm's own srun or batch shell)."""
    return [(pid, cmd) for pid, cmd in job_processes(cluster, node)
            if any(w in cmd for w in SERVING_WORDS) and not cmd.startswith("srun ") and "slurm_script" not in cmd]


def wait_until(what: str, check, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
