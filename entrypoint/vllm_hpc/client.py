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
from .hostlist import parse_hostlist
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


def _squeue_output(args: list[str]) -> str | None:
    """squeue's output without its header, or None where there is no squeue, it failed
    or did not answer within 15 s."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _squeue(job_id: str, fmt: str) -> list[str] | None:
    lines = (_squeue_output(["-t", "all", "-j", job_id, "-o", fmt]) or "").split()
    return lines or None


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
    if queue is not None and not state and not job_dir.exists():
        _refuse_others_job(job)
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
        "started_epoch": state.get("started_epoch"),
        "nodes": state.get("nodes") or [],
        "array_id": state.get("array_id"),
    }


def _refuse_others_job(job: str) -> None:
    """A job Slurm lists that has no directory here may be another user's."""
    import getpass

    owner = (_squeue(job, "%u") or [""])[0]
    me = getpass.getuser()
    if owner and owner != me:
        raise NoJobError(f"job {job} belongs to {owner}, not to you ({me})", "give one of your own job ids (vllm-hpc jobs lists them)")


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


# -- the Python API and the login-node commands: env, stop, jobs, cleanup ----------


def connection(job_id: str | None = None) -> dict[str, Any]:
    """What any OpenAI client needs for a ready job: ``base_url``, ``api_key`` (read
    from the job's 0600 key file now, never stored elsewhere; None without a key) and
    ``model``. The documented Python API::

        from openai import OpenAI
        from vllm_hpc.client import connection
        c = connection("123456")
        OpenAI(base_url=c["base_url"], api_key=c["api_key"] or "none").completions.create(model=c["model"], ...)
    """
    info = job_status(job_id)
    endpoint = info.get("endpoint")
    if not endpoint:
        raise NoJobError(f"job {info['job_id']} is {info['phase']}, not ready", "wait with: vllm-hpc wait " + info["job_id"])
    key = jobfiles.read_secret_file(endpoint["api_key_file"], "API key") if endpoint.get("api_key_file") else None
    return {"job_id": info["job_id"], "base_url": endpoint["url"], "api_key": key, "model": endpoint["model"]}


def env_lines(conn: dict[str, Any]) -> list[str]:
    """Pure: shell lines that point any OpenAI SDK, curl or harness at the job."""
    import shlex

    lines = [f"export OPENAI_BASE_URL={shlex.quote(conn['base_url'])}"]
    lines.append(f"export OPENAI_API_KEY={shlex.quote(conn['api_key'] or 'none')}")
    lines.append(f"export OPENAI_MODEL={shlex.quote(conn['model'])}")
    return lines


ENDED_PHASES = ("failed", "ended", "stopped")


def stop_job(job_id: str | None, timeout: float, interval: float = 1.0) -> dict[str, Any]:
    """An ordered stop, the walltime warning's path: the stop-request file in the job
    directory, which every node of the job watches; a job still waiting in the queue
    is cancelled. Waits until Slurm says the job ended and returns its last status."""
    info = job_status(job_id)
    job = info["job_id"]
    if info["phase"] in ENDED_PHASES:
        return info
    if info["phase"] == "pending":
        subprocess.run(["scancel", job], capture_output=True, text=True, timeout=30, check=False)
    else:
        jobfiles.write_private(Path(info["job_dir"]) / "stop-request", f"vllm-hpc stop {time.time()}\n")
    start = last_report = time.monotonic()
    while True:
        queue, _ = slurm_view(job)
        if queue is None or queue in FINAL_SLURM_STATES:
            final = job_status(job)
            final["slurm_state"] = queue or final.get("slurm_state")
            return final
        if time.monotonic() - start > timeout:
            raise NotReadyError(f"job {job} still {queue} {timeout:.0f}s after the stop request",
                                f"wait longer with --timeout, or end it at once with scancel {job}")
        if time.monotonic() - last_report >= 10:
            print(f"[vllm-hpc] stopping job {job}: Slurm says {queue} ({time.monotonic() - start:.0f}s of {timeout:.0f}s)",
                  file=sys.stderr, flush=True)
            last_report = time.monotonic()
        time.sleep(interval)


# The project's sbatch scripts, and the job name they give: how this user's jobs in
# Slurm's queue are told apart from their other jobs.
SCRIPT_NAMES = frozenset({"single-gpu.sbatch", "single-node.sbatch", "multinode.sbatch"})
QUEUE_FORMAT = "%A|%i|%T|%j|%o|%N|%V"


def parse_queue(text: str, jobs_dir: Path) -> list[dict[str, Any]]:
    """Pure: rows for the vllm-hpc jobs in ``squeue --me -o QUEUE_FORMAT`` output: those
    running one of the project's scripts or named ``vllm-hpc``."""
    rows = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != 7:
            continue
        job, shown, state, name, command, nodes, submitted = fields
        ours = Path((command.split() or [""])[0]).name in SCRIPT_NAMES or name == "vllm-hpc"
        # A job that is completing, with no directory, never started serving: nothing to show.
        if not ours or (state not in PENDING_SLURM_STATES and state != "RUNNING"):
            continue
        rows.append({
            "job_id": job,
            "array_id": shown if shown != job else None,
            "phase": _phase(None, state, slurm_known=True),
            "slurm_state": state,
            "model": None,
            "nodes": parse_hostlist(nodes) if nodes and nodes != "(null)" else [],
            "url": None,
            "started_epoch": parse_slurm_time(submitted),
            "job_dir": str(jobs_dir / job),
        })  # fmt: skip
    return rows


def _queued_jobs(jobs_dir: Path) -> list[dict[str, Any]]:
    """This user's vllm-hpc jobs in Slurm's queue (pending or running)."""
    return parse_queue(_squeue_output(["--me", "-o", QUEUE_FORMAT]) or "", jobs_dir)


def list_jobs(include_ended: bool) -> list[dict[str, Any]]:
    """Every job of the job directory, and every vllm-hpc job of this user that Slurm
    queues or runs before its directory exists, newest first, with phase and endpoint."""
    jobs = _jobs_dir()
    rows = []
    known = set()  # jobs whose state file speaks for them, listed or not
    for job_dir in jobs.iterdir() if jobs.is_dir() else []:
        if not (job_dir / "state.json").exists():
            continue
        known.add(job_dir.name)
        try:
            info = job_status(job_dir.name)
        except (NoJobError, JobFailedError):
            continue
        if info["phase"] in ENDED_PHASES and not include_ended:
            continue
        endpoint = info.get("endpoint") or {}
        rows.append({
            "job_id": info["job_id"],
            "array_id": info["array_id"],
            "phase": info["phase"],
            "slurm_state": info.get("slurm_state"),
            "model": endpoint.get("model"),
            "nodes": info["nodes"],
            "url": endpoint.get("url"),
            "started_epoch": info["started_epoch"],
            "job_dir": info["job_dir"],
        })  # fmt: skip
    rows += [row for row in _queued_jobs(jobs) if row["job_id"] not in known]
    return sorted(rows, key=lambda r: r["started_epoch"] or 0, reverse=True)


def render_jobs(rows: list[dict[str, Any]], now: float) -> str:
    """Pure: one line per job."""
    if not rows:
        return "no vllm-hpc jobs (vllm-hpc jobs --all also lists ended ones)"
    lines = [f"{'JOBID':<12} {'PHASE':<9} {'SLURM':<11} {'MODEL':<20} {'NODES':<16} {'AGE':>7}  URL"]
    for r in rows:
        age = _age(now - r["started_epoch"]) if r["started_epoch"] else "?"
        shown = r["array_id"] or r["job_id"]
        lines.append(f"{shown:<12} {r['phase']:<9} {r['slurm_state'] or '-':<11} {(r['model'] or '-')[:20]:<20}"
                     f" {','.join(r['nodes'])[:16] or '-':<16} {age:>7}  {r['url'] or '-'}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def parse_age(text: str) -> float:
    """Pure: '7d', '12h', '30m', '90s' or plain seconds, to seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        from .errors import UsageError

        raise UsageError(f"--older-than '{text}' is not an age", "give it as 7d, 12h, 30m or seconds") from None
    return seconds


def cleanup_jobs(older_than_s: float, dry_run: bool) -> list[str]:
    """Removes the directories of ended jobs (failed, stopped, ended) last written more
    than ``older_than_s`` ago; a job Slurm still runs or holds is never touched."""
    removed = []
    cutoff = time.time() - older_than_s
    for row in list_jobs(include_ended=True):
        if row["phase"] not in ENDED_PHASES:
            continue
        job_dir = Path(row["job_dir"])
        newest = max((p.stat().st_mtime for p in job_dir.rglob("*") if p.is_file()), default=job_dir.stat().st_mtime)
        if newest > cutoff:
            continue
        if not dry_run:
            shutil.rmtree(job_dir)
        removed.append(row["job_id"])
    return removed
