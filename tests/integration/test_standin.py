"""The multi-node vLLM stand-in (tests/bed/standin_vllm.py) against a real Ray head.

One Ray 2.60 head with token authentication and 4 (fake) GPUs runs on a loopback
address for the whole module; the stand-in is started as the entrypoint starts vLLM.
Ray treats 127.0.0.1 as "this host" and swaps in the default-route address, so the
head uses 127.0.0.2, which stays on the loopback interface.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, free_port, stop_group

pytestmark = pytest.mark.integration

pytest.importorskip("ray")

NODE_IP = "127.0.0.2"
RAY = str(Path(sys.executable).parent / "ray")
API_KEY = "standin-test-key"


@dataclass
class RayHead:
    address: str
    token_path: Path
    env: dict[str, str]


def wait_for(what: str, check, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    tmp = Path(tempfile.mkdtemp(prefix="vhs", dir="/tmp"))  # short: Ray's socket paths
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port = free_port(NODE_IP)
    worker_base = random.randrange(20000, 30000, 200)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VLLM_"))}
    env.update(
        HOME=str(tmp),  # keeps ~/.ray/auth_token of the user out of the picture
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3",
        RAY_agent_register_timeout_ms="120000",  # two busy cores: slow agent start-up
        VLLM_HOST_IP=NODE_IP,
        NCCL_SOCKET_IFNAME="lo",
        GLOO_SOCKET_IFNAME="lo",
    )
    cmd = [
        RAY, "start", "--head", "--block", "--node-ip-address", NODE_IP, "--port", str(port),
        "--ray-client-server-port", str(free_port(NODE_IP)),
        "--dashboard-agent-listen-port", str(free_port(NODE_IP)),
        "--min-worker-port", str(worker_base), "--max-worker-port", str(worker_base + 199),
        "--include-dashboard=false", "--disable-usage-stats", "--num-gpus", "4",
        "--temp-dir", str(tmp / "ray"),
    ]
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            if head.poll() is not None:
                raise AssertionError(f"ray start exited {head.returncode}: {(tmp / 'head.log').read_text()[-2000:]}")
            probe = [RAY, "health-check", "--address", f"{NODE_IP}:{port}"]
            return subprocess.run(probe, env=env, capture_output=True, timeout=60).returncode == 0

        wait_for("the Ray head", healthy, timeout=300, interval=2)
        yield RayHead(address=f"{NODE_IP}:{port}", token_path=token, env=env)
    finally:
        if head.poll() is None:
            stop_group(head, grace=60)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


class Standin:
    """A running `python -m standin_vllm`, with its output collected."""

    def __init__(self, head: RayHead, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(head.env, RAY_ADDRESS=head.address, VLLM_API_KEY=API_KEY,
                        PYTHONPATH=str(REPO / "tests/bed"))
        full_env.update(env)
        cmd = [sys.executable, "-m", "standin_vllm", "--model", "/models/tiny",
               "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(self.port),
               *args]
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                self.reader.join(timeout=5)
                raise AssertionError(f"stand-in exited {self.proc.returncode}:\n{self.output[-3000:]}")
            return any("Application startup complete." in line for line in self.lines)

        wait_for("the stand-in's start-up line", ready, timeout=timeout)

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def standin(ray_head: RayHead) -> Iterator:
    started: list[Standin] = []

    def start(*args: str, **env: str) -> Standin:
        s = Standin(ray_head, *args, **env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


TP4 = ("--tensor-parallel-size", "4", "--pipeline-parallel-size", "1",
       "--distributed-executor-backend", "ray", "--max-model-len", "512")


def test_serves_like_vllm_and_reports_ranks(standin) -> None:
    import requests

    s = standin(*TP4)
    s.wait_ready()
    assert "stand-in" in s.output
    assert "ignoring options it does not act on: --max-model-len 512" in s.output

    assert requests.get(f"{s.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{s.url}/ping", timeout=10).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        denied = requests.get(f"{s.url}/v1/models", headers=headers, timeout=10)
        assert denied.status_code == 401
        assert denied.json() == {"error": "Unauthorized"}

    auth = {"Authorization": f"Bearer {API_KEY}"}
    models = requests.get(f"{s.url}/v1/models", headers=auth, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]

    chat = requests.post(f"{s.url}/v1/chat/completions", headers=auth, timeout=10, json={
        "model": "tiny", "temperature": 0, "max_tokens": 2,
        "messages": [{"role": "system", "content": "You are brief."},
                     {"role": "user", "content": "Say hello."}],
    })
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "stand-in reply"}
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 2
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    completion = requests.post(f"{s.url}/v1/completions", headers=auth, timeout=10,
                               json={"model": "tiny", "prompt": "one two three", "max_tokens": 1})
    assert completion.status_code == 200, completion.text
    assert completion.json()["choices"][0]["text"] == "stand-in"
    assert completion.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}

    unknown = requests.post(f"{s.url}/v1/completions", headers=auth, timeout=10,
                            json={"model": "other", "prompt": "x"})
    assert unknown.status_code == 404

    ranks = requests.get(f"{s.url}/standin/ranks", timeout=10).json()
    assert ranks["world_size"] == 4
    assert [r["rank"] for r in ranks["ranks"]] == [0, 1, 2, 3]
    assert {r["node_ip"] for r in ranks["ranks"]} == {NODE_IP}
    assert len({r["pid"] for r in ranks["ranks"]}) == 4
    assert sorted(g for r in ranks["ranks"] for g in r["gpu_ids"]) == ["0", "1", "2", "3"]
    for r in ranks["ranks"]:
        assert r["env"]["VLLM_HOST_IP"] == NODE_IP
        assert r["env"]["NCCL_SOCKET_IFNAME"] == "lo"
        assert r["env"]["GLOO_SOCKET_IFNAME"] == "lo"

    s.proc.send_signal(signal.SIGTERM)
    assert s.wait_exit(timeout=60) == 0


def test_exits_naming_the_rank_whose_actor_died(standin) -> None:
    import requests

    s = standin(*TP4)
    s.wait_ready()
    victim = requests.get(f"{s.url}/standin/ranks", timeout=10).json()["ranks"][2]
    os.kill(victim["pid"], signal.SIGKILL)
    assert s.wait_exit(timeout=60) == 1
    assert f"rank 2 (node {NODE_IP}" in s.output
    assert "died" in s.output


def test_placement_group_needs_the_driver_ip_of_a_ray_node(standin) -> None:
    # vLLM pins the first bundle to node:<VLLM_HOST_IP>; a wrong IP never fits.
    s = standin(*TP4, VLLM_HOST_IP="127.0.0.9", VLLM_HPC_STANDIN_PG_TIMEOUT="5")
    assert s.wait_exit(timeout=120) == 1
    assert "Cannot provide a placement group" in s.output
    assert "node:127.0.0.9" in s.output


def test_more_gpus_than_the_cluster_has(standin) -> None:
    s = standin("--tensor-parallel-size", "4", "--pipeline-parallel-size", "2",
                VLLM_HPC_STANDIN_PG_TIMEOUT="5")
    assert s.wait_exit(timeout=120) == 1
    assert "Cannot provide a placement group" in s.output


def test_a_driver_with_the_wrong_ray_token_is_refused(standin, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    s = standin(*TP4, RAY_AUTH_TOKEN_PATH=str(wrong))
    assert s.wait_exit(timeout=180) == 1
    assert "cannot connect to Ray" in s.output
    assert "Application startup complete." not in s.output
