"""A job's life in real Slurm beyond one run: a reused job id, a requeue, an array task.
Slurm's view wins over files an earlier run left in the job directory."""

from __future__ import annotations

import json
import re
import time

import pytest

from helpers import VLLM_HPC, cancel_job, submit_standin_job, vllm_hpc, wait_final, wait_ready, wait_until

pytestmark = pytest.mark.integration


def status_of(job: str, env: dict[str, str]) -> dict:
    result = vllm_hpc("status", job, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_reused_id_and_a_requeue_never_show_an_earlier_run(cluster2, tiny_model):
    c = cluster2
    job, env, home, out = submit_standin_job(c, "lifetime", tiny_model, ["--nodes=2", "--gpus-per-node=4", "--hold", "--requeue"])
    job_dir = home / "jobs" / str(job)
    try:
        # What an earlier job with the same id left behind (Slurm's ids start again at 1
        # when its state is lost): a failure, and an endpoint.
        job_dir.mkdir(parents=True, mode=0o700)
        earlier = time.time() - 3600
        (job_dir / "state.json").write_text(json.dumps({"phase": "failed", "reason": "an earlier job's failure",
                                                        "started_epoch": earlier, "updated_epoch": earlier}))
        (job_dir / "endpoint.json").write_text(json.dumps({"url": "http://10.0.0.1:1/v1", "model": "old"}))
        held = status_of(str(job), env)
        assert (held["phase"], held["slurm_state"]) == ("pending", "PENDING"), held
        c.slurm(["scontrol", "release", str(job)])
        first = wait_ready(job, env, out)
        assert first["reason"] is None and first["endpoint"]["model"] == "tiny"

        # A requeue: while Slurm holds it, the run before is not shown as ready.
        c.slurm(["scontrol", "requeue", str(job)])
        during = wait_until("status to leave ready", lambda: (s := status_of(str(job), env))["phase"] != "ready" and s, 30)
        assert during["phase"] in ("pending", "starting") and during["endpoint"] is None, during
        t0 = time.monotonic()
        again = wait_ready(job, env, out, timeout=300)
        print(f"\nrequeued job {job}: {during['phase']} (Slurm {during['slurm_state']}), ready again after {time.monotonic() - t0:.1f}s")
        state = json.loads((job_dir / "state.json").read_text())
        assert state["run"].startswith("1.") and "reason" not in state, state
        assert again["endpoint"]["started"] >= first["endpoint"]["started"]
    finally:
        cancel_job(c, job)


def test_an_array_task_is_reached_by_the_id_squeue_shows(cluster2, tiny_model):
    c = cluster2
    job, env, home, out = submit_standin_job(c, "array", tiny_model, ["--nodes=2", "--gpus-per-node=4", "--array=3"])
    task = f"{job}_3"
    try:
        shown = c.slurm(["squeue", "-h", "-j", task, "-o", "%i|%A"]).stdout.split()
        assert shown and shown[0].startswith(f"{task}|"), shown
        real = shown[0].split("|")[1]
        # The output file name pattern %j names the task's own job id.
        result = vllm_hpc("wait", task, "--timeout", "180", "--json", env=env, timeout=210)
        assert result.returncode == 0, result.stderr
        ready = json.loads(result.stdout)
        assert ready["job_id"] == real and ready["phase"] == "ready"
        state = json.loads((home / "jobs" / real / "state.json").read_text())
        assert state["array_id"] == task
        chat = vllm_hpc("chat", task, "Hello", env=env)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    finally:
        cancel_job(c, job)
    # Once Slurm has forgotten the task, its state file still names it.
    wait_until("Slurm forgets the task", lambda: not c.slurm(["squeue", "-h", "-j", task], check=False).stdout.strip(), 120)
    ended = vllm_hpc("status", task, "--json", env=env)
    assert json.loads(ended.stdout)["job_id"] == real, ended.stdout + ended.stderr


def test_a_second_serve_step_of_a_job_is_refused_and_the_first_serves_on(cluster2, tiny_model):
    c = cluster2
    job, env, home, out = submit_standin_job(c, "steps", tiny_model, ["--nodes=2", "--gpus-per-node=4"])
    job_dir = home / "jobs" / str(job)
    try:
        wait_ready(job, env, out)
        before = {name: (job_dir / name).read_bytes() for name in ("state.json", "endpoint.json", "api-key")}
        # A step beside the serving one: it shares the CPUs (--overlap), and says it has
        # GPUs, which Slurm would not give it while the first step holds them.
        second = c.slurm(["srun", f"--jobid={job}", "--overlap", "--kill-on-bad-exit=1", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                          VLLM_HPC, "serve", "--model", tiny_model, "--interface", "ib0"],
                         env={**env, "SLURM_GPUS_ON_NODE": "4"}, timeout=120, check=False)
        print(f"\nsecond step: exit {second.returncode}: {second.stderr.strip().splitlines()[-1:]}")
        # The leader refuses (13); srun --kill-on-bad-exit then stops the step's worker (143).
        assert "gpu01: task 0: Exited with exit code 13" in second.stderr, second.stdout + second.stderr
        assert f"step 0 of job {job} already serves at http://" in second.stderr and "Traceback" not in second.stderr
        assert {name: (job_dir / name).read_bytes() for name in before} == before
        chat = vllm_hpc("chat", str(job), "Hello", env=env)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    finally:
        cancel_job(c, job)


def test_a_job_directory_the_nodes_do_not_share_is_named_within_a_minute(cluster2, tiny_model):
    """VLLM_HPC_HOME on each node's private /tmp: every node sees only its own job directory."""
    c = cluster2
    local_home = f"/tmp/vhpc-local-{time.time_ns()}"
    job, env, home, out = submit_standin_job(c, "local-home", tiny_model, ["--nodes=2", "--gpus-per-node=4"],
                                             VLLM_HPC_HOME=local_home)
    try:
        state, text, took = wait_final(c, job, out)
        print(f"\nnode-local VLLM_HPC_HOME: job {job} ended {state} {took:.1f}s after submit")
        assert state == "FAILED", text
        assert "the job directory is not on a file system the job's nodes share" in text, text
        assert f"set VLLM_HPC_HOME (now {local_home}) to a directory every node mounts" in text
        assert took < 120, "named within about a minute, not at the 600 s join deadline"
    finally:
        cancel_job(c, job)


def test_the_walltime_warning_stops_every_node_in_order_and_the_job_completes(cluster2, tiny_model):
    """--time=5 with the warning 120 s early: the stop comes 120 to 180 s after the start.

    Slurm may send the warning up to 60 s before the time asked for, so with --time=3 it
    could come before the job is ready.
    """
    c = cluster2
    job, env, home, out = submit_standin_job(c, "walltime", tiny_model, ["--nodes=2", "--gpus-per-node=4", "--time=5"])
    try:
        wait_ready(job, env, out)
        state, text, took = wait_final(c, job, out, timeout=300)
        print(f"\nwalltime warning: job {job} ended {state}, {took:.1f}s after it was ready")
        assert state == "COMPLETED", text
        assert "walltime warning: asking every node for an ordered stop" in text
        assert text.count("stop requested (the walltime warning or vllm-hpc stop)") >= 1, text
        assert text.count("this node's processes are stopped") == 2, text
        assert "error:" not in text, text
        leader_log = (home / "jobs" / str(job) / "logs" / "gpu01" / "vllm-hpc.log").read_text()
        # The server stops before the Ray head.
        stops = re.findall(r"stopping (server|ray-head) \(pid", leader_log)
        assert stops == ["server", "ray-head"], leader_log[-3000:]
        state_file = json.loads((home / "jobs" / str(job) / "state.json").read_text())
        assert (state_file["phase"], state_file["reason"]) == ("stopped", "stopped by a stop request"), state_file
    finally:
        cancel_job(c, job)
