"""The README's quick-start job: `bash tests/bed/demo.sh` serves and chats for real."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import MODEL_CACHE, REPO, SHIPPED_VLLM, base_env, served_vllm_version

pytestmark = pytest.mark.integration


def test_demo_serves_and_chats(tmp_path, tiny_model):
    env = base_env(tmp_path)
    # A path of this test's own, so that the leftover check sees only the demo's processes.
    model = tmp_path / "model"
    model.symlink_to(MODEL_CACHE)
    result = subprocess.run(["bash", str(REPO / "tests/bed/demo.sh"), str(model)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    reply = json.loads(result.stdout.split('"Hello! What can you do?"', 1)[1].split("--- demo done")[0])
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert "READY" in result.stderr and "this node's processes are stopped" in result.stderr
    assert [served_vllm_version(job) for job in (tmp_path / "jobs").iterdir()] == [SHIPPED_VLLM]
    left = subprocess.run(["pgrep", "-f", "--", f"--model {model}"], capture_output=True, text=True).stdout.split()
    assert left == []
