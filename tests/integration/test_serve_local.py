"""`vllm-hpc serve` with a real (CPU) vLLM serving the tiny model, outside Slurm."""

from __future__ import annotations

import json
import stat
import time

import psutil
import pytest
import requests

from helpers import SHIPPED_VLLM, LocalServer, all_cmdlines, descendants_gone, served_vllm_version, vllm_hpc

pytestmark = pytest.mark.integration

SEED_REQUEST = {
    "model": "tiny",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0,
    "max_tokens": 16,
}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    srv = LocalServer(tmp_path_factory.mktemp("local"), tiny_model, ["--liveness-interval", "5"])
    try:
        srv.status = srv.wait_ready()
    except BaseException:
        srv.stop()  # a server that never became ready must not outlive the test run
        raise
    srv.ready_after = time.monotonic() - srv.started
    print(f"\nvllm-hpc serve (CPU vLLM, tiny model): ready after {srv.ready_after:.1f}s")
    yield srv
    srv.stop()


def auth(srv):
    return {"Authorization": f"Bearer {srv.api_key()}"}


def test_ready_means_endpoint_file(server):
    assert server.status["phase"] == "ready"
    endpoint = server.endpoint()
    assert endpoint["url"] == f"http://127.0.0.1:{server.port}/v1"
    assert endpoint["model"] == "tiny"
    assert endpoint["api_key_file"] == str(server.job_dir / "api-key")
    assert served_vllm_version(server.job_dir) == SHIPPED_VLLM


def test_models_lists_served_name(server):
    reply = requests.get(f"{server.endpoint()['url']}/models", headers=auth(server), timeout=30)
    assert reply.status_code == 200
    assert [m["id"] for m in reply.json()["data"]] == ["tiny"]


def test_chat_completion_answers_the_seed_request(server):
    reply = requests.post(f"{server.endpoint()['url']}/chat/completions", json=SEED_REQUEST, headers=auth(server), timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_api_key_is_required(server):
    url = f"{server.endpoint()['url']}/models"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert requests.get(url, headers=auth(server), timeout=30).status_code == 200


def test_key_never_in_argv_or_logs(server):
    key = server.api_key()
    assert len(key) >= 32
    assert not [pid for pid, cmd in all_cmdlines().items() if key in cmd]
    texts = [server.log.read_text()] + [p.read_text(errors="replace") for p in (server.job_dir / "logs").rglob("*") if p.is_file()]
    assert texts and not [t for t in texts if key in t]
    plan = vllm_hpc("plan", "--model", str(server.endpoint()["model_path"]), "--interface", "lo", "--json", env=server.env)
    assert plan.returncode == 0 and key not in plan.stdout


def test_job_files_are_private(server):
    assert stat.S_IMODE((server.job_dir).stat().st_mode) == 0o700
    for path in [server.job_dir / "api-key", server.job_dir / "endpoint.json", server.job_dir / "state.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (server.job_dir / "logs").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_everyday_commands(server):
    status = vllm_hpc("status", server.job, "--json", env=server.env)
    assert status.returncode == 0 and json.loads(status.stdout)["phase"] == "ready"
    human = vllm_hpc("status", server.job, env=server.env)
    assert "ready" in human.stdout and "curl" in human.stdout and server.api_key() not in human.stdout
    chat = vllm_hpc("chat", server.job, "Hello!", "--max-tokens", "4", "--json", env=server.env)
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout)["choices"][0]["message"]["role"] == "assistant"


def test_sigterm_stops_everything(server):
    children = [p.pid for p in psutil.Process(server.process.pid).children(recursive=True)]
    assert children, "serve should have a vLLM child"
    t0 = time.monotonic()
    code = server.stop(timeout=90)
    took = time.monotonic() - t0
    print(f"\nSIGTERM to exit: {took:.1f}s")
    assert code == 143
    assert descendants_gone(children, 15) == []
    assert json.loads((server.job_dir / "state.json").read_text())["phase"] == "stopped"


def test_vllm_death_ends_serve_fast(tiny_model, tmp_path):
    srv = LocalServer(tmp_path, tiny_model, ["--liveness-interval", "0"])
    try:
        srv.wait_ready()
        vllm = next(p for p in psutil.Process(srv.process.pid).children() if "vllm" in " ".join(p.cmdline()))
        everything = [p.pid for p in psutil.Process(srv.process.pid).children(recursive=True)]
        t0 = time.monotonic()
        vllm.kill()
        code = srv.process.wait(timeout=30)
        took = time.monotonic() - t0
        print(f"\nvLLM killed -> vllm-hpc exited {code} after {took:.1f}s")
        assert code == 7 and took < 10
        last = srv.log.read_text().strip().splitlines()
        assert any("server on this node ended" in line for line in last)
        assert descendants_gone(everything, 15) == []
        state = json.loads((srv.job_dir / "state.json").read_text())
        assert state["phase"] == "failed" and "server" in state["reason"]
    finally:
        srv.stop()
