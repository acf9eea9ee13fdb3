"""What real Slurm does that a bed built to vllm-hpc's assumptions would not: steps
smaller than the allocation, several tasks per node, GPUs spread unevenly. On the
shared bed clusters (whose nodes' hostnames differ from their Slurm names)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time

import pytest

from helpers import REPO, VLLM_HPC, cancel_job, job_env, job_home, serving_processes, submit_standin_job, wait_final, wait_ready

pytestmark = pytest.mark.integration


def run_batch(c, env, out, sbatch_args, script, timeout=90):
    job = c.sbatch([*sbatch_args, f"--output={out}", f"--chdir={REPO}", "--wrap", script], env=env)
    state = c.wait_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout=timeout)
    return job, state, out.read_text()


def plans(text: str) -> dict[str, dict]:
    """The JSON plans the steps printed, by step label."""
    found = {}
    for line in text.splitlines():
        if line.startswith("PLAN "):
            label, data = line[5:].split(" ", 1)
            found.setdefault(label, []).append(json.loads(data))
    return found


def test_steps_smaller_than_the_allocation_plan_from_their_own_nodes(cluster3, tiny_model):
    """A 2-node step and a 1-node step side by side in a 3-node allocation."""
    c = cluster3
    home = job_home("steps")
    env = job_env(c, home)
    plan = f"{VLLM_HPC} plan --model {tiny_model} --interface ib0 --json"
    show = "printf 'PLAN %s %s\\n' {} \"$(" + plan + " | tr -d '\\n')\""
    script = (f"srun -N2 -n2 --relative=0 bash -c {shlex.quote(show.format('two'))} & "
              f"srun -N1 -n1 --relative=2 bash -c {shlex.quote(show.format('one'))}; wait")
    job, state, text = run_batch(c, env, home / "out.txt", ["--nodes=3", "--gres=gpu:4"], script)
    assert state == "COMPLETED", text
    found = plans(text)
    two = sorted(found["two"], key=lambda p: p["node_rank"])
    assert [(p["role"], p["hostname"], p["nodes"]) for p in two] == [
        ("leader", "gpu01", ["gpu01", "gpu02"]), ("worker", "gpu02", ["gpu01", "gpu02"])]
    assert all(p["pipeline_parallel_size"] == 2 and p["tensor_parallel_size"] == 4 for p in two)
    [one] = found["one"]
    assert (one["role"], one["hostname"], one["nodes"], one["pipeline_parallel_size"]) == ("single", "gpu03", ["gpu03"], 1)


def test_several_tasks_per_node_and_serve_outside_srun_are_refused(cluster2, tiny_model):
    c = cluster2
    home = job_home("tasks")
    env = job_env(c, home)
    serve = f"{VLLM_HPC} serve --model {tiny_model} --interface ib0"
    script = (f"srun --ntasks-per-node=2 {serve}; echo STEP_EXIT=$?; "
              f"{serve}; echo BATCH_EXIT=$?")
    t0 = time.monotonic()
    job, state, text = run_batch(c, env, home / "out.txt", ["--nodes=2", "--ntasks-per-node=2", "--gres=gpu:4"], script)
    took = time.monotonic() - t0
    assert "STEP_EXIT=13" in text and "BATCH_EXIT=13" in text, text
    assert "2 tasks of this step run on one node (SLURM_STEP_TASKS_PER_NODE=2(x2))" in text
    assert "a 2-node serve is running outside any srun step" in text
    assert "Traceback" not in text
    print(f"\nrefusals: job {job} done in {took:.1f}s")
    assert not any(serving_processes(c, n) for n in c.node_names)


def test_uneven_gpus_fail_the_job_when_the_nodes_join(cluster2, tiny_model):
    """--gpus=6 over two 4-GPU nodes gives 4 + 2: known when the worker joins, not after the 600 s join deadline."""
    c = cluster2
    job, env, home, out = submit_standin_job(c, "uneven", tiny_model, ["--nodes=2", "--gpus=6"])
    try:
        state, text, took = wait_final(c, job, out)
        print(f"\nuneven GPUs: job {job} ended {state} {took:.1f}s after submit")
        assert state == "FAILED", text
        assert re.search(r"uneven GPU counts: gpu0[12] has [24], the leader [24]", text), text
        assert "--gpus-per-node=N or --gres=gpu:N" in text
        assert took < 120, "the leader should refuse as soon as the nodes join"
    finally:
        cancel_job(c, job)


# Holds a port until its standard input closes (nsenter's own death would leave it running).
LISTEN = "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('listening', flush=True); sys.stdin.read()"


def test_a_busy_port_block_moves_each_node_to_a_free_one(cluster2, tiny_model):
    """Another program holds the leader's Ray port and a worker's raylet port: the job moves on."""
    from vllm_hpc.plan import port_block

    c = cluster2
    job, env, home, out = submit_standin_job(c, "busy-ports", tiny_model, ["--nodes=2", "--gpus-per-node=4", "--hold"])
    first = port_block(str(job), None)
    holders = [subprocess.Popen(c.node_command(node, [sys.executable, "-c", LISTEN, c.fabric_ip(node), str(first + offset)]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for node, offset in (("gpu01", 1), ("gpu02", 2))]  # the head's GCS port; the worker's raylet port
    try:
        assert all(h.stdout.readline().strip() == "listening" for h in holders)
        c.slurm(["scontrol", "release", str(job)])
        status = wait_ready(job, env, out)
        text = out.read_text()
        assert f"port {first + 1} (ray_gcs) of the job's block {first} is in use on this node; using block" in text, text
        assert f"port {first + 2} (ray_node_manager) of the job's block {first} is in use on this node; using block" in text, text
        leader = json.loads((home / "jobs" / str(job) / "leader.json").read_text())
        assert leader["ray_gcs"] != first + 1
        assert status["endpoint"]["url"].startswith(f"http://{c.fabric_ip('gpu01')}:")
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(timeout=30)
        cancel_job(c, job)
