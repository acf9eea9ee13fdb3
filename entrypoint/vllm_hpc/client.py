"""The everyday loop from a login node: status, wait and chat, read from the job directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import jobfiles
from .errors import JobFailedError, NoJobError, NotReadyError
from .settings import read_settings

NEW_JOB_GRACE_S = 30.0
# A state file written this long before Slurm's start of the job's current run is from an
# earlier run (a requeue, or an earlier job with the same id); clocks of the nodes and
# the controller may differ a little.
STALE_MARGIN_S = 5.0
PENDING_SLURM_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
FINAL_SLURM_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
FAILED_SLURM_STATES = FINAL_SLURM_STATES - {"COMPLETED", "CANCELLED"}


def _jobs_dir() -> Path:
    return read_settings(dict(os.environ)).home / "jobs"


def resolve_job(job_id: str | None) -> str:
    """The job directory's name for what the user typed: a job id, an array task
    (``8125_3``, as squeue shows it), $SLURM_JOB_ID, or the newest job."""
    if job_id:
        return resolve_array_task(job_id) if ARRAY_TASK.match(job_id) else job_id
    if os.environ.get("SLURM_JOB_ID"):
        return os.environ["SLURM_JOB_ID"]
    jobs = _jobs_dir()
    try:
        newest = max((p for p in jobs.iterdir() if (p / "state.json").exists()), key=lambda p: (p / "state.json").stat().st_mtime)
    except (ValueError, OSError):
        raise NoJobError(f"no vllm-hpc job found under {jobs}", "give the job id, or submit one with sbatch") from None
    return newest.name


ARRAY_TASK = re.compile(r"^\d+_\d+$")


def resolve_array_task(array_id: str) -> str:
    """An array task's own job id (its job directory's name): from Slurm while it knows
    the task, else from the state files, which record it."""
    found = _squeue(array_id, "%A")
    if found and found[0].isdigit():
        return found[0]
    jobs = _jobs_dir()
    for state in sorted(jobs.glob("*/state.json")) if jobs.is_dir() else []:
        data = jobfiles.read_json(state) or {}
        if data.get("array_id") == array_id:
            return state.parent.name
    raise NoJobError(f"array task {array_id} is unknown to Slurm and to {jobs}", "check the id with squeue")


def _squeue(job_id: str, fmt: str) -> list[str] | None:
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", fmt], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines if out.returncode == 0 and lines else None


def parse_slurm_time(text: str) -> float | None:
    """squeue's %S/%V times ("2026-11-30T15:01:02", local time); None for N/A, Unknown."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def slurm_view(job_id: str) -> tuple[str | None, float | None]:
    """The job's state and the start of its current run, from squeue."""
    if not job_id.replace("_", "").isdigit():
        return None, None
    found = _squeue(job_id, "%T|%S")
    if not found:
        return None, None
    state, _, start = found[0].partition("|")
    return state, parse_slurm_time(start)


def is_stale(state: dict[str, Any], queue: str | None, run_start: float | None) -> bool:
    """Pure: was this state file written by an earlier run of the id than Slurm's current one?"""
    if queue not in ("RUNNING", "COMPLETING") or run_start is None or not state:
        return False
    written = state.get("started_epoch") or state.get("updated_epoch") or 0
    return written < run_start - STALE_MARGIN_S


def _phase(state_phase: str | None, queue: str | None, slurm_known: bool) -> str | None:
    """Pure: the job's phase from its own state file and Slurm's view of it.

    Slurm's waiting states win over the file, which may be from a run before a requeue."""
    if queue in PENDING_SLURM_STATES:
        return "pending"
    if state_phase in ("failed", "stopped"):
        return state_phase
    if queue in FINAL_SLURM_STATES:
        return "failed" if queue in FAILED_SLURM_STATES and state_phase != "ready" else "ended"
    if state_phase in ("starting", "ready"):
        # Slurm no longer lists a job it should know: it ended without a final word.
        return "ended" if slurm_known and queue is None else state_phase
    if queue is not None:
        return "starting"
    return None


def job_status(job_id: str | None) -> dict[str, Any]:
    job = resolve_job(job_id)
    job_dir = _jobs_dir() / job
    state = jobfiles.read_json(job_dir / "state.json") or {}
    endpoint = jobfiles.read_json(job_dir / "endpoint.json")
    queue, run_start = slurm_view(job)
    if is_stale(state, queue, run_start):
        state, endpoint = {}, None
    slurm_known = bool(shutil.which("squeue")) and job.replace("_", "").isdigit()
    phase = _phase(state.get("phase"), queue, slurm_known)
    if phase is None:
        raise NoJobError(f"job {job} is unknown to Slurm and has no state in {job_dir}", "check the job id with squeue")
    reason = state.get("reason")
    if phase in ("failed", "ended") and not reason:
        reason = f"Slurm says {queue}" if queue else "the job left Slurm's queue"
        reason += "; see the job's Slurm output file"
    return {
        "job_id": job,
        "phase": phase,
        "slurm_state": queue,
        "reason": reason,
        "endpoint": endpoint if phase == "ready" else None,
        "job_dir": str(job_dir),
        "updated": state.get("updated"),
    }


def render_status(info: dict[str, Any]) -> str:
    lines = [f"job {info['job_id']}: {info['phase']}" + (f" (Slurm: {info['slurm_state']})" if info.get("slurm_state") else "")]
    if info.get("reason"):
        lines.append(f"  reason   {info['reason']}")
    endpoint = info.get("endpoint")
    if endpoint:
        from .serve import curl_line

        lines.append(f"  url      {endpoint['url']}")
        lines.append(f"  model    {endpoint['model']}")
        if endpoint.get("api_key_file"):
            lines.append(f"  api key  in {endpoint['api_key_file']}")
        lines.append(f"  try      {curl_line(endpoint)}")
        fabric = endpoint.get("fabric") or {}
        if fabric.get("summary"):
            lines.append(f"  fabric   {fabric['summary']}")
        if fabric.get("warning"):
            lines.append(f"  WARNING  {fabric['warning']}")
    lines.append(f"  job dir  {info['job_dir']}")
    return "\n".join(lines)


def wait_until_ready(job_id: str | None, timeout: float, interval: float = 1.0) -> dict[str, Any]:
    job = resolve_job(job_id)
    start = time.monotonic()
    last_report = start
    info: dict[str, Any] = {}
    while True:
        elapsed = time.monotonic() - start
        try:
            info = job_status(job)
        except NoJobError:
            # A job that was just started may not have written its state yet.
            if elapsed >= min(NEW_JOB_GRACE_S, timeout):
                raise
            info = {"job_id": job, "phase": "not started yet"}
        phase = info["phase"]
        if phase == "ready":
            return info
        if phase in ("failed", "ended", "stopped"):
            raise JobFailedError(f"job {job} {phase} before it was ready: {info.get('reason') or 'no reason recorded'}", f"see the logs in {info.get('job_dir')}")
        if elapsed >= timeout:
            raise NotReadyError(f"job {job} not ready after {timeout:.0f}s (phase: {phase})", "wait longer with --timeout or check vllm-hpc status")
        if time.monotonic() - last_report >= 10:
            print(f"[vllm-hpc] waiting for job {job}: {phase} ({elapsed:.0f}s of {timeout:.0f}s)", file=sys.stderr, flush=True)
            last_report = time.monotonic()
        time.sleep(interval)


def chat_once(job_id: str | None, message: str, system: str, max_tokens: int, temperature: float) -> dict[str, Any]:
    import requests

    info = job_status(job_id)
    endpoint = info.get("endpoint")
    if not endpoint:
        raise NoJobError(f"job {info['job_id']} is {info['phase']}, not ready", "wait with: vllm-hpc wait " + info["job_id"])
    headers = {}
    if endpoint.get("api_key_file"):
        key = jobfiles.read_secret_file(endpoint["api_key_file"], "API key")
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": endpoint["model"],
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": message}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    try:
        reply = requests.post(f"{endpoint['url']}/chat/completions", json=body, headers=headers, timeout=300)
    except requests.RequestException as err:
        raise NotReadyError(f"cannot reach {endpoint['url']}: {type(err).__name__}", "check vllm-hpc status; from a login node use an SSH tunnel (see README)") from None
    if reply.status_code != 200:
        raise NotReadyError(f"{endpoint['url']} answered {reply.status_code}: {reply.text[:200]}", "check the server log in the job directory")
    return reply.json()
