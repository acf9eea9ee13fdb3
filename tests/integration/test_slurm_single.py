"""Configuration A through `sbatch slurm/single-gpu.sbatch` on the emulated cluster,
with the real (CPU) vLLM serving the tiny model inside a node."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from helpers import SHIPPED_VLLM, VLLM_HPC, job_env, job_home, job_processes, served_vllm_version, submit, wait_ready, wait_until
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

        # `vllm-hpc metrics` over an interval with a burst of requests in it: the figures move.
        metrics = subprocess.Popen([VLLM_HPC, "metrics", str(job), "--interval", "10", "--json"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        with ThreadPoolExecutor(max_workers=4) as pool:
            burst = list(pool.map(lambda _: requests.post(f"{endpoint['url']}/chat/completions", json=SEED_REQUEST,
                                                          headers=headers, timeout=120).status_code, range(8)))
        assert burst == [200] * 8
        stdout, stderr = metrics.communicate(timeout=120)
        assert metrics.returncode == 0, stderr
        figures = json.loads(stdout)
        print(f"metrics over a burst of 8: {figures}")
        assert figures["requests_finished"] >= 8 and figures["generation_tokens_per_s"] > 0 and figures["prompt_tokens_per_s"] > 0
        assert figures["ttft_s"]["p50"] is not None and figures["e2e_latency_s"]["p90"] is not None
        assert figures["kv_cache_usage_pct"] is not None and figures["requests_aborted"] == 0
    finally:
        c.slurm(["scancel", str(job)], check=False)
        wait_until("job processes gone", lambda: not any(job_processes(c, n) for n in c.node_names), 60)
