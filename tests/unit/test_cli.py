"""The CLI as a user meets it: one-line errors, documented exit codes, no traceback."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vllm_hpc", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    return str(tmp_path / "m")


def clean_env(tmp_path, **extra):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": ":".join(sys.path)}
    env.update(extra)
    return env


def assert_one_line_error(result, code, *words):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vllm-hpc: error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "plan", "status", "wait", "chat", "doctor"):
        assert command in result.stdout


def test_plan_json_for_a_worker(tmp_path, model):
    env = clean_env(tmp_path, SLURM_JOB_ID="55", SLURM_NODEID="1", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[01-02]", SLURM_GPUS_ON_NODE="2",
                    SLURM_STEP_ID="0", SLURMD_NODENAME="gpu02")
    result = run("plan", "--model", model, "--interface", "lo", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["role"] == "worker" and data["nodes"] == ["gpu01", "gpu02"] and data["leader"] == "gpu01"
    assert data["interface"] == "lo" and data["node_ip"] == "127.0.0.1"
    assert data["tensor_parallel_size"] == 2 and data["pipeline_parallel_size"] == 2




def test_plan_and_help_stay_light(tmp_path, model):
    """No vLLM, Ray or HTTP client import on the plan and --help paths."""
    for args in (["--help"], ["plan", "--model", model, "--interface", "lo"]):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "vllm_hpc", *args],
            capture_output=True, text=True, env=clean_env(tmp_path), timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
        heavy = sorted(m for m in imported if m.split(".")[0] in ("vllm", "ray", "torch", "requests", "transformers"))
        assert heavy == [], heavy
