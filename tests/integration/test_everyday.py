"""status, wait, chat and doctor against jobs on the emulated Slurm cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from helpers import REPO, STANDIN_ENV, VLLM_HPC, cancel_job, job_env, job_home, submit, submit_standin_job, vllm_hpc, wait_ready

pytestmark = pytest.mark.integration


def test_status_follows_a_job_from_pending_to_ready_and_chat_answers(cluster2, tiny_model):
    c = cluster2
    job, env, home, out = submit_standin_job(c, "everyday", tiny_model, ["--nodes=2", "--gpus-per-node=4", "--hold"])
    try:
        held = vllm_hpc("status", str(job), "--json", env=env)
        assert held.returncode == 0, held.stderr
        assert json.loads(held.stdout)["phase"] == "pending"
        # Before its job directory exists, `jobs` finds it in Slurm's queue.
        listed = json.loads(vllm_hpc("jobs", "--json", env=env).stdout)
        assert [(r["phase"], r["slurm_state"]) for r in listed if r["job_id"] == str(job)] == [("pending", "PENDING")], listed
        c.slurm(["scontrol", "release", str(job)])
        status = wait_ready(job, env, out)
        assert status["phase"] == "ready" and status["slurm_state"] == "RUNNING"
        human = vllm_hpc("status", str(job), env=env)
        assert f"job {job}: ready" in human.stdout and "curl" in human.stdout
        chat = vllm_hpc("chat", str(job), "Hello there", env=env)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
        # The curl line printed into the job's output works as printed.
        line = next(l for l in out.read_text().splitlines() if "try: curl" in l).split("try: ", 1)[1]
        reply = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert json.loads(reply.stdout)["object"] == "chat.completion", reply.stdout + reply.stderr
    finally:
        c.slurm(["scancel", str(job)], check=False)


def test_wait_reports_a_failed_job(cluster2, tmp_path):
    c = cluster2
    home = job_home("failing")
    env = job_env(c, home, **STANDIN_ENV)
    (tmp_path / "nomodel").mkdir()
    job = submit(c, "multinode.sbatch", ["--nodes=2", "--gpus-per-node=4"], ["--model", str(tmp_path / "nomodel")], env, home / "job.out")
    result = vllm_hpc("wait", str(job), "--timeout", "60", env=env, timeout=90)
    assert result.returncode == 11, result.stderr
    assert "before it was ready" in result.stderr
    assert "no config.json" in (home / "job.out").read_text()


def test_doctor_on_every_node(cluster2, tiny_model):
    c = cluster2
    env = job_env(c, job_home("doctor"))
    result = subprocess.run(
        ["srun", "--label", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", VLLM_HPC, "doctor", "--model", tiny_model, "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    by_task: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        task, _, text = line.partition(": ")
        by_task.setdefault(task.strip(), []).append(text)
    reports = [json.loads("\n".join(lines)) for lines in by_task.values()]
    assert len(reports) == 2
    seen_ips = set()
    for checks in reports:
        by = {c["check"]: c for c in checks}
        assert by["gpus"]["status"] == "ok" and "4 GPU" in by["gpus"]["detail"]
        assert by["network"]["status"] == "ok" and by["network"]["detail"].startswith("ib0 ")
        seen_ips.add(by["network"]["detail"].split()[1])
        assert by["model"]["status"] == "ok" and by["ports"]["status"] == "ok"
        assert by["ray"]["status"] == "ok" and by["vllm"]["status"] == "ok"
    assert seen_ips == {c.fabric_ip(n) for n in c.node_names}


def test_doctor_fails_on_a_missing_model(cluster2, tmp_path):
    env = job_env(cluster2, job_home("doctor-bad"))
    result = subprocess.run(
        ["srun", "--nodes=1", VLLM_HPC, "doctor", "--model", str(tmp_path / "missing")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "FAIL model" in result.stdout and "put the model on a file system every node mounts" in result.stdout


def test_doctor_fabric_measures_each_link_and_names_a_node_whose_link_is_down(cluster3):
    c = cluster3
    env = job_env(c, job_home("fabric"))

    def fabric(timeout: int) -> subprocess.CompletedProcess:
        argv = ["srun", "--nodes=3", "--ntasks-per-node=1", VLLM_HPC, "doctor", "--fabric", "--interface", "ib0",
                "--fabric-timeout", str(timeout), "--json"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)

    result = fabric(60)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["backend"], data["interface"], data["nodes"]) == ("gloo", "ib0", c.node_names)
    assert [row["bytes"] for row in data["allreduce"]] == [1 << 20, 16 << 20, 64 << 20]
    assert all(row["bus_gbs"] > 0 and row["ms"] > 0 for row in data["allreduce"])
    assert sorted(data["pairs"]) == ["gpu01<->gpu02", "gpu01<->gpu03"] and all(v > 0 for v in data["pairs"].values())
    from vllm_hpc.fabric import render

    print("\n" + render(data))

    # gpu03's fabric link goes down: the leader names it, no traceback anywhere.
    c.node_exec("gpu03", ["ip", "link", "set", "ib0", "down"], check=True)
    try:
        result = fabric(10)
    finally:
        c.node_exec("gpu03", ["ip", "link", "set", "ib0", "up"], check=True)
    print(result.stderr[-1500:])
    assert result.returncode != 0
    assert "gpu03 did not reach the leader's fabric address" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_fabric_check_reports_the_links_before_ray_starts(cluster2, tiny_model):
    c = cluster2
    job, env, home, out = submit_standin_job(c, "fabric-check", tiny_model, ["--nodes=2", "--gpus-per-node=4"], [],
                                             VLLM_HPC_FABRIC_CHECK="1")
    try:
        wait_ready(job, env, out)
        text = out.read_text()
        assert "fabric: gloo over ib0 across 2 nodes (gpu01, gpu02)" in text, text[-3000:]
        assert "pair gpu01<->gpu02" in text and "all-reduce   64 MiB" in text
        # Before Ray: the leader's table comes before its Ray head starts.
        assert text.index("fabric: gloo") < text.index("started ray-head")
    finally:
        c.slurm(["scancel", str(job)], check=False)


def test_the_daily_path_launch_jobs_chat_metrics_env_openai_stop_and_cleanup(cluster2, tiny_model):
    """As a user would, through the real Slurm and the real CPU vLLM (one GPU's script)."""
    c = cluster2
    home = job_home("daily")
    env = job_env(c, home)
    launch = [VLLM_HPC, "launch", "--model", tiny_model, "--time", "30:00", "--served-model-name", "tiny"]
    vllm_args = ["--", "--max-model-len", "512"]
    # --dry-run prints the very line launch submits.
    dry = subprocess.run([*launch, "--dry-run", *vllm_args], env=env, cwd=home, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (f"VLLM_HPC_IMAGE=none sbatch --parsable --time=30:00 {REPO}/slurm/single-gpu.sbatch"
                                  f" --model {tiny_model} --served-model-name tiny -- --max-model-len 512")
    t0 = time.monotonic()
    launched = subprocess.run([*launch, "--wait", "--timeout", "600", "--json", *vllm_args], env=env, cwd=home,
                              capture_output=True, text=True, timeout=660)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    ready = json.loads(launched.stdout)
    job = int(ready["job_id"])
    print(f"\nlaunch --wait: job {job} ready in {time.monotonic() - t0:.1f}s")
    out = home / f"vllm-hpc-{job}.out"
    job_dir = home / "jobs" / str(job)
    try:
        assert ready["phase"] == "ready" and ready["endpoint"]["model"] == "tiny"
        info = c.slurm(["scontrol", "show", "job", "-o", str(job)]).stdout
        assert "TimeLimit=00:30:00" in info and "NumNodes=1" in info, info
        listed = json.loads(vllm_hpc("jobs", "--json", env=env).stdout)
        assert [(r["phase"], r["model"]) for r in listed if r["job_id"] == str(job)] == [("ready", "tiny")], listed
        print(vllm_hpc("jobs", env=env).stdout)
        chat = vllm_hpc("chat", str(job), "Hello", env=env)
        assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr

        # `vllm-hpc metrics` over an interval with a burst of requests in it: the figures move.
        metrics = subprocess.Popen([VLLM_HPC, "metrics", str(job), "--interval", "10", "--json"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        url, key = ready["endpoint"]["url"], (job_dir / "api-key").read_text().strip()
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16}
        with ThreadPoolExecutor(max_workers=4) as pool:
            burst = list(pool.map(lambda _: requests.post(f"{url}/chat/completions", json=body, timeout=120,
                                                          headers={"Authorization": f"Bearer {key}"}).status_code, range(8)))
        assert burst == [200] * 8
        stdout, stderr = metrics.communicate(timeout=120)
        assert metrics.returncode == 0, stderr
        figures = json.loads(stdout)
        print(f"metrics over a burst of 8: {figures}")
        assert figures["requests_finished"] >= 8 and figures["generation_tokens_per_s"] > 0 and figures["prompt_tokens_per_s"] > 0
        assert figures["ttft_s"]["p50"] is not None and figures["e2e_latency_s"]["p90"] is not None
        assert figures["kv_cache_usage_pct"] is not None and figures["requests_aborted"] == 0

        # `vllm-hpc env` into a shell; the openai SDK reads OPENAI_BASE_URL and OPENAI_API_KEY itself.
        sdk = ("import openai, os; r = openai.OpenAI().completions.create(model=os.environ['OPENAI_MODEL'], prompt='Hi', max_tokens=4);"
               " print(r.usage.completion_tokens)")
        script = f'eval "$({VLLM_HPC} env {job})" && exec {sys.executable} -c "{sdk}"'
        reply = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert reply.returncode == 0 and int(reply.stdout.strip()) > 0, reply.stdout + reply.stderr
        assert key not in out.read_text()

        stopped = vllm_hpc("stop", str(job), "--json", env=env, timeout=300)
        assert stopped.returncode == 0, stopped.stderr
        final = json.loads(stopped.stdout)
        assert (final["phase"], final["slurm_state"]) == ("stopped", "COMPLETED"), final
        assert "stop requested (the walltime warning or vllm-hpc stop)" in out.read_text()
        assert [r for r in json.loads(vllm_hpc("jobs", "--json", env=env).stdout) if r["job_id"] == str(job)] == []
        ended = json.loads(vllm_hpc("jobs", "--all", "--json", env=env).stdout)
        assert [r["phase"] for r in ended if r["job_id"] == str(job)] == ["stopped"], ended

        kept = vllm_hpc("cleanup", "--older-than", "1h", env=env)
        assert kept.stdout.strip() == "removed 0 job directories" and job_dir.exists()
        cleaned = vllm_hpc("cleanup", "--older-than", "0", env=env)
        assert cleaned.stdout.strip() == f"removed 1 job directory: {job}" and not job_dir.exists()
    finally:
        cancel_job(c, job)


def test_launch_refusals_name_the_problem(cluster2, tiny_model):
    c = cluster2
    env = job_env(c, job_home("launch-bad"), **STANDIN_ENV)
    bad = subprocess.run([VLLM_HPC, "launch", "--model", tiny_model, "--nodes", "2", "--partition", "nope"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 13 and "sbatch refused the job" in bad.stderr and "partition" in bad.stderr.lower(), bad.stderr
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    # A job that is not ours: the bed's jobs run as root, so pose as another user.
    job = c.sbatch(["--wrap", "sleep 60", "--output=/dev/null"], env=env)
    try:
        other = vllm_hpc("status", str(job), env={**env, "USER": "nobody", "LOGNAME": "nobody"})
        assert other.returncode == 10 and f"job {job} belongs to root, not to you (nobody)" in other.stderr, other.stderr
    finally:
        cancel_job(c, job)

