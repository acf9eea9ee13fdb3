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
    env = clean_env(tmp_path, SLURM_JOB_ID="55", SLURM_NODEID="1", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[01-02]", SLURM_GPUS_ON_NODE="2")
    result = run("plan", "--model", model, "--interface", "lo", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["role"] == "worker" and data["nodes"] == ["gpu01", "gpu02"] and data["leader"] == "gpu01"
    assert data["interface"] == "lo" and data["node_ip"] == "127.0.0.1"
    assert data["tensor_parallel_size"] == 2 and data["pipeline_parallel_size"] == 2


@pytest.mark.parametrize(
    "args, env_extra, code, words",
    [
        (["serve", "--model", "/does/not/exist"], {}, 3, ["does not exist"]),
        (["serve", "--model", "MODEL", "--bogus"], {}, 2, ["No such option"]),
        (["plan", "--model", "MODEL", "--interface", "ib7"], {}, 5, ["'ib7' does not exist"]),
        (["plan", "--model", "MODEL"], {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "gpu[01-"}, 3, ["cannot parse node list"]),
        (["plan", "--model", "MODEL"], {"VLLM_HPC_PORT_BASE": "abc"}, 3, ["VLLM_HPC_PORT_BASE"]),
        (["plan", "--model", "MODEL", "-tp", "3"], {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "g1", "SLURM_GPUS_ON_NODE": "4"}, 4, ["does not match the 4 GPUs"]),
        (["plan", "--model", "MODEL", "--", "--api-key", "x"], {}, 2, ["visible to every user"]),
        (["status", "999999"], {}, 10, ["999999"]),
    ],
)
def test_bad_input_one_line(tmp_path, model, args, env_extra, code, words):
    args = [model if a == "MODEL" else a for a in args]
    assert_one_line_error(run(*args, env=clean_env(tmp_path, **env_extra)), code, *words)


def test_model_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("plan", "--model", str(tmp_path / "empty"), env=clean_env(tmp_path)), 3, "no config.json")
