"""Configuration A through `sbatch slurm/single-gpu.sbatch` on the emulated cluster,
with the real (CPU) vLLM serving the tiny model inside a node."""

from __future__ import annotations

import time

import pytest
import requests

from helpers import SHIPPED_VLLM, job_env, job_home, job_processes, served_vllm_version, submit, wait_ready, wait_until
from test_serve_local import SEED_REQUEST

pytestmark = pytest.mark.integration


def test_single_node_job_serves_the_seed_request(cluster2, tiny_model):
    c = cluster2
    home = job_home("single")
    env = job_env(c, home)
    out = home / "job.out"
    t0 = time.monotonic()
    job = submit(c, "single-gpu.sbatch", ["--nodes=1"], ["--model", tiny_model, "--served-model-name", "tiny", "--max-model-len", "512"], env, out)
    try:
        status = wait_ready(job, env, out, timeout=900)
        print(f"\nsingle-node job {job} (CPU vLLM): submit to ready {time.monotonic() - t0:.1f}s")
        endpoint = status["endpoint"]
        node = endpoint["node"]
        assert endpoint["url"].startswith(f"http://{c.fabric_ip(node)}:")
        assert (endpoint["tensor_parallel_size"], endpoint["pipeline_parallel_size"]) == (1, 1)
        assert served_vllm_version(home / "jobs" / str(job)) == SHIPPED_VLLM
        key = open(endpoint["api_key_file"]).read().strip()
        headers = {"Authorization": f"Bearer {key}"}
        models = requests.get(f"{endpoint['url']}/models", headers=headers, timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        reply = requests.post(f"{endpoint['url']}/chat/completions", json=SEED_REQUEST, headers=headers, timeout=120)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
        assert 0 < body["usage"]["completion_tokens"] <= SEED_REQUEST["max_tokens"]
        assert requests.post(f"{endpoint['url']}/chat/completions", json=SEED_REQUEST, timeout=30).status_code == 401
        assert "READY" in out.read_text()
    finally:
        c.slurm(["scancel", str(job)], check=False)
        wait_until("job processes gone", lambda: not any(job_processes(c, n) for n in c.node_names), 60)
