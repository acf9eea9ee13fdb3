"""Several nodes through `sbatch slurm/multinode.sbatch`: a real Slurm, a real Ray
cluster over each node's ib0, and the multi-node stand-in in vLLM's place (a CPU vLLM
cannot use Ray; see tests/bed/standin_vllm.py)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import requests

from helpers import BIN, REPO, all_cmdlines, job_processes, serving_processes, submit_standin_job, wait_ready, wait_until

pytestmark = pytest.mark.integration


def start_job(cluster, name, nodes, tiny_model, extra_serve=(), sbatch_extra=(), gpus=4, env_extra=None, gpu_flag="--gpus-per-node={}"):
    t0 = time.monotonic()
    job, env, home, out = submit_standin_job(
        cluster, name, tiny_model, [f"--nodes={nodes}", gpu_flag.format(gpus), *sbatch_extra],
        ["--liveness-interval", "2", *extra_serve], **(env_extra or {}),
    )
    status = wait_ready(job, env, out)
    took = time.monotonic() - t0
    print(f"\n{nodes}-node job {job}: submit to ready in {took:.1f}s")
    return job, env, home, out, status


def key_of(status):
    with open(status["endpoint"]["api_key_file"]) as handle:
        return handle.read().strip()


# As users submit: GPUs per node as --gpus-per-node or as --gres (the script names
# neither), and a --ntasks-per-node on the sbatch line, which the script overrides to
# one task per node. Every node's hostname differs from its Slurm name on the bed.
SUBMISSIONS = {
    "cluster2": {"sbatch_extra": ("--ntasks-per-node=2",)},
    "cluster3": {"gpu_flag": "--gres=gpu:{}"},
}


@pytest.mark.parametrize("cluster_name", ["cluster2", "cluster3"])
def test_multinode_job_serves_over_ray_on_ib0(cluster_name, request, tiny_model):
    c = request.getfixturevalue(cluster_name)
    n = len(c.node_names)
    job, env, home, out, status = start_job(c, cluster_name, n, tiny_model, **SUBMISSIONS[cluster_name])
    try:
        endpoint = status["endpoint"]
        leader_ip = c.fabric_ip("gpu01")
        assert endpoint["url"].startswith(f"http://{leader_ip}:")
        assert endpoint["nodes"] == c.node_names
        assert (endpoint["tensor_parallel_size"], endpoint["pipeline_parallel_size"]) == (4, n)

        # The stand-in placed one GPU bundle per rank across the nodes, as vLLM does.
        ranks = requests.get(f"{endpoint['base_url']}/standin/ranks", timeout=30).json()["ranks"]
        assert len(ranks) == 4 * n
        by_ip = {}
        for rank in ranks:
            by_ip.setdefault(rank["node_ip"], []).append(rank)
        assert sorted(by_ip) == sorted(c.fabric_ip(node) for node in c.node_names)
        for node in c.node_names:
            ip = c.fabric_ip(node)
            assert ip != c.mgmt_ip(node)
            assert len(by_ip[ip]) == 4
            for rank in by_ip[ip]:
                assert rank["hostname"] == c.hostname(node)  # not its Slurm name
                assert rank["env"]["VLLM_HOST_IP"] == ip
                assert rank["env"]["NCCL_SOCKET_IFNAME"] == "ib0"
                assert rank["env"]["GLOO_SOCKET_IFNAME"] == "ib0"
                # NCCL's account of its transport goes to the rank's own node's log dir.
                assert rank["env"]["NCCL_DEBUG_FILE"] == f"{home}/jobs/{job}/logs/{node}/nccl.%h.%p.log"

        # No GPU here, so no NCCL log: the endpoint says so rather than guess.
        assert endpoint["fabric"]["summary"].startswith("no NCCL log") and endpoint["fabric"]["warning"] is None

        # The script's CPUs and memory per GPU: 4 GPUs x 4 CPUs on every node.
        info = c.slurm(["scontrol", "show", "job", "-o", str(job)]).stdout
        assert f"NumCPUs={16 * n} " in info and "MemPerTres=gres:gpu:32768" in info, info

        # One vllm-hpc per node, whatever --ntasks-per-node the sbatch line gave.
        for node in c.node_names:
            serves = [cmd for _, cmd in serving_processes(c, node) if "/bin/vllm-hpc serve " in cmd]
            assert len(serves) == 1, (node, serves)

        # The leader launched the server with TP 4 x PP n over the Ray executor.
        server = [cmd for _, cmd in c.node_processes("gpu01") if "standin_vllm" in cmd and "-m" in cmd]
        assert server, c.node_processes("gpu01")
        assert f"--tensor-parallel-size 4 --pipeline-parallel-size {n} --distributed-executor-backend ray" in server[0]

        # A chat completion through the OpenAI interface, with and without the key.
        body = {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 8}
        key = key_of(status)
        assert requests.post(f"{endpoint['url']}/chat/completions", json=body, timeout=30).status_code == 401
        reply = requests.post(f"{endpoint['url']}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
        models = requests.get(f"{endpoint['url']}/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]

        # Secrets: in no command line on any node, in no output or log; files 0600.
        for node in c.node_names:
            assert not [cmd for _, cmd in c.node_processes(node) if key in cmd]
        assert not [cmd for cmd in all_cmdlines().values() if key in cmd]
        job_dir = home / "jobs" / str(job)
        token = (job_dir / "ray-token").read_text().strip()
        for path in [out, *job_dir.rglob("*.log")]:
            text = path.read_text(errors="replace")
            assert key not in text and token not in text, path
        for secret in ("api-key", "ray-token"):
            assert stat.S_IMODE((job_dir / secret).stat().st_mode) == 0o600
        assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    finally:
        c.slurm(["scancel", str(job)], check=False)
        wait_until("job processes gone", lambda: not any(job_processes(c, node) for node in c.node_names), 60)


def test_ray_refuses_clients_without_the_token(cluster2, tiny_model):
    c = cluster2
    job, env, home, out, status = start_job(c, "token", 2, tiny_model)
    try:
        leader = json.loads((home / "jobs" / str(job) / "leader.json").read_text())
        address = f"{leader['ip']}:{leader['ray_gcs']}"
        probe = "import ray, sys; ray.init(address=sys.argv[1]); print('NODES', len([n for n in ray.nodes() if n['Alive']]))"
        python = str(BIN / "python")
        # A Ray driver needs a Ray node on its own machine: probe from inside the leader node.
        clean = {k: v for k, v in env.items() if not k.startswith("RAY_")}
        refused = c.node_exec("gpu01", [python, "-c", probe, address], env=clean, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "NODES" not in refused.stdout
        last = (refused.stderr.strip().splitlines() or ["?"])[-1]
        print("\nwithout the token:", last[:300])
        assert "auth" in refused.stderr.lower() or "token" in refused.stderr.lower(), refused.stderr[-2000:]
        allowed_env = {**clean, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / "jobs" / str(job) / "ray-token")}
        allowed = c.node_exec("gpu01", [python, "-c", probe, address], env=allowed_env, capture_output=True, text=True, timeout=120)
        assert "NODES 2" in allowed.stdout, allowed.stderr[-2000:]
    finally:
        c.slurm(["scancel", str(job)], check=False)


def test_scancel_leaves_nothing_on_any_node(cluster2, tiny_model):
    c = cluster2
    job, env, home, out, status = start_job(c, "scancel", 2, tiny_model)
    assert all(job_processes(c, node) for node in c.node_names)
    t0 = time.monotonic()
    c.slurm(["scancel", str(job)])
    wait_until("every process of the job gone", lambda: not any(job_processes(c, node) for node in c.node_names), 30)
    print(f"\nscancel to nothing left on any node: {time.monotonic() - t0:.1f}s")
    for node in c.node_names:
        assert c.node_exec(node, ["ls", "/tmp"], capture_output=True, text=True).stdout.split().count(f"vhpc-{job}") == 0


def node_state(cluster, node):
    return cluster.slurm(["sinfo", "-h", "-N", "-n", node, "-o", "%T"]).stdout.strip()


def test_worker_node_death_ends_the_job(fresh_cluster, tiny_model):
    c = fresh_cluster(2)
    job, env, home, out, status = start_job(c, "nodedeath", 2, tiny_model)
    t0 = time.monotonic()
    c.kill_node("gpu02")
    wait_until("vllm-hpc, Ray and the server gone from the leader", lambda: not serving_processes(c, "gpu01"), 30, interval=0.05)
    print(f"\nworker node killed -> serving processes gone from the leader in {time.monotonic() - t0:.1f}s")
    # srun alone waits until Slurm declares gpu02 down (SlurmdTimeout); the batch script
    # drops the lost node from the job and ends it once the leader has stopped.
    wait_until("job final in Slurm", lambda: c.job_state(job) == "FAILED", 60, interval=0.2)
    print(f"worker node killed -> job FAILED in Slurm in {time.monotonic() - t0:.1f}s")
    assert "down" not in node_state(c, "gpu02"), "Slurm declared the node down before the job ended"
    info = c.slurm(["scontrol", "show", "job", "-o", str(job)]).stdout
    assert "ExitCode=7:0" in info and "Comment=vllm-hpc: node gpu02" in info and " NodeList=gpu01 " in info, info
    assert node_state(c, "gpu01") == "idle"
    print(f"Slurm's view of the lost node then: {node_state(c, 'gpu02')}")
    wait_until("the job's processes on the leader's node gone", lambda: not job_processes(c, "gpu01"), 30)
    print(f"worker node killed -> every job process gone from the leader's node in {time.monotonic() - t0:.1f}s")
    text = out.read_text()
    assert "gpu02" in text and "left the Ray cluster" in text and "ending the job on gpu01 now" in text, text[-3000:]
    assert "slurm_job" not in text and not list(REPO.glob("slurm_job_*")), "scontrol's resize files belong in the job directory"
    state = json.loads((home / "jobs" / str(job) / "state.json").read_text())
    assert state["phase"] == "failed" and "gpu02" in state["reason"]


def test_leader_ray_head_death_stops_workers(fresh_cluster, tiny_model):
    c = fresh_cluster(2)
    job, env, home, out, status = start_job(c, "headdeath", 2, tiny_model)
    gcs = [pid for pid, cmd in c.node_processes("gpu01") if "gcs_server" in cmd]
    assert gcs
    t0 = time.monotonic()
    os.kill(gcs[0], 9)
    wait_until("worker processes gone", lambda: not job_processes(c, "gpu02"), 30)
    print(f"\nleader's Ray head killed -> worker node empty in {time.monotonic() - t0:.1f}s")
    wait_until("leader processes gone", lambda: not job_processes(c, "gpu01"), 30)


def test_two_jobs_share_nodes_without_collisions(cluster2, tiny_model):
    c = cluster2
    first = start_job(c, "share-a", 2, tiny_model, gpus=2)
    second = start_job(c, "share-b", 2, tiny_model, gpus=2)
    try:
        (job_a, _, _, _, status_a), (job_b, _, _, _, status_b) = first, second
        assert status_a["endpoint"]["port"] != status_b["endpoint"]["port"]
        c.slurm(["scancel", str(job_a)])
        wait_until("first job gone", lambda: c.job_state(job_a) not in ("RUNNING", "COMPLETING"), 30)
        time.sleep(3)
        key = key_of(status_b)
        reply = requests.post(
            f"{status_b['endpoint']['url']}/completions",
            json={"model": "tiny", "prompt": "Hi", "max_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert reply.status_code == 200
        assert c.job_state(job_b) == "RUNNING"
        ranks = requests.get(f"{status_b['endpoint']['base_url']}/standin/ranks", timeout=30).json()["ranks"]
        assert len(ranks) == 4
    finally:
        c.slurm(["scancel", str(first[0]), str(second[0])], check=False)
        wait_until("job processes gone", lambda: not any(job_processes(c, node) for node in c.node_names), 60)


@pytest.mark.apptainer
def test_multinode_job_inside_the_image(cluster2, tiny_model):
    """The same job with the entrypoint inside the test image, under srun + apptainer exec."""
    image = os.environ.get("VLLM_HPC_TEST_IMAGE", "/var/cache/vllm-hpc-bed/vllm-hpc-test.sif")
    if not os.path.exists(image) and os.environ.get("VLLM_HPC_SKIP_APPTAINER") == "1":
        pytest.skip("no test image and VLLM_HPC_SKIP_APPTAINER=1")
    c = cluster2
    bed = str(REPO / "tests" / "bed")
    job, env, home, out, status = start_job(c, "image", 2, tiny_model, env_extra={"VLLM_HPC_IMAGE": image, "VLLM_HPC_BIND": bed})
    try:
        ranks = requests.get(f"{status['endpoint']['base_url']}/standin/ranks", timeout=30).json()["ranks"]
        assert sorted({r["node_ip"] for r in ranks}) == sorted(c.fabric_ip(n) for n in c.node_names)
        # The server and Ray ran from the image's own Python.
        leader = [cmd for _, cmd in c.node_processes("gpu01") if "standin_vllm" in cmd]
        assert leader and leader[0].startswith("/opt/vllm-hpc/venv/bin/python"), leader
        assert any("Apptainer" in cmd or "apptainer" in cmd for _, cmd in c.node_processes("gpu02"))
    finally:
        c.slurm(["scancel", str(job)], check=False)
        wait_until("job processes gone", lambda: not any(job_processes(c, node) for node in c.node_names), 60)
