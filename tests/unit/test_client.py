import pytest

from vllm_hpc.client import ARRAY_TASK, _phase, is_stale, parse_slurm_time

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "state, queue, known, phase",
    [
        (None, "PENDING", True, "pending"),
        (None, "RUNNING", True, "starting"),
        ("starting", "RUNNING", True, "starting"),
        ("ready", "RUNNING", True, "ready"),
        ("ready", None, True, "ended"),
        ("ready", None, False, "ready"),
        ("starting", "FAILED", True, "failed"),
        ("ready", "CANCELLED", True, "ended"),
        (None, "NODE_FAIL", True, "failed"),
        ("failed", "RUNNING", True, "failed"),
        ("stopped", None, True, "stopped"),
        (None, None, True, None),
        # Slurm's waiting states win over a file from the run before a requeue.
        ("ready", "PENDING", True, "pending"),
        ("failed", "REQUEUED", True, "pending"),
        ("ready", "REQUEUE_HOLD", True, "pending"),
    ],
)
def test_phase_from_state_and_slurm(state, queue, known, phase):
    assert _phase(state, queue, known) == phase


def test_a_state_file_from_before_the_current_run_is_stale():
    start = parse_slurm_time("2026-11-30T15:01:02")
    assert start is not None
    old = {"phase": "failed", "started_epoch": start - 3600}
    assert is_stale(old, "RUNNING", start)
    assert not is_stale({"phase": "ready", "started_epoch": start + 3}, "RUNNING", start)
    assert not is_stale(old, "COMPLETED", start)  # a final state keeps the run's own word
    assert not is_stale(old, "RUNNING", None)
    assert parse_slurm_time("N/A") is None


def test_array_task_ids_are_recognised():
    assert ARRAY_TASK.match("8125_3") and not ARRAY_TASK.match("8125") and not ARRAY_TASK.match("8125_[1-3]")


def test_env_lines_quote_for_the_shell():
    from vllm_hpc.client import env_lines

    lines = env_lines({"base_url": "http://10.0.0.1:15600/v1", "api_key": "k'1", "model": "my model"})
    assert lines == ["export OPENAI_BASE_URL=http://10.0.0.1:15600/v1", "export OPENAI_API_KEY='k'\"'\"'1'",
                     "export OPENAI_MODEL='my model'"]
    assert env_lines({"base_url": "u", "api_key": None, "model": "m"})[1] == "export OPENAI_API_KEY=none"


def test_jobs_table_and_ages():
    from vllm_hpc.client import parse_age, render_jobs

    rows = [{"job_id": "12", "array_id": "8125_3", "phase": "ready", "slurm_state": "RUNNING", "model": "tiny",
             "nodes": ["gpu01", "gpu02"], "url": "http://10.0.0.1:15600/v1", "started_epoch": 1000.0}]
    text = render_jobs(rows, now=1000.0 + 7200)
    assert "8125_3" in text and "ready" in text and "gpu01,gpu02" in text and " 2h " in text and text.endswith("/v1")
    assert "--all" in render_jobs([], 0)
    assert (parse_age("7d"), parse_age("12h"), parse_age("30m"), parse_age("90")) == (604800, 43200, 1800, 90)


def test_slurms_queue_adds_this_users_vllm_hpc_jobs_before_their_directory_exists(tmp_path):
    from vllm_hpc.client import parse_queue

    text = "\n".join([
        "41|41|PENDING|vllm-hpc|/home/u/vllm-hpc/slurm/multinode.sbatch|(null)|2026-11-30T10:00:00",
        "42|8125_3|RUNNING|mine|/opt/vllm-hpc/slurm/single-gpu.sbatch|gpu[01-02]|2026-11-30T10:01:00",
        "43|43|RUNNING|vllm-hpc|/home/u/copy.sh|gpu03|2026-11-30T10:02:00",
        "44|44|RUNNING|train|/home/u/train.sh|gpu04|2026-11-30T10:03:00",
        "45|45|COMPLETING|vllm-hpc|/home/u/vllm-hpc/slurm/multinode.sbatch|gpu05|2026-11-30T10:04:00",
        "garbage",
    ])  # fmt: skip
    rows = {r["job_id"]: r for r in parse_queue(text, tmp_path)}
    assert sorted(rows) == ["41", "42", "43"], "neither another batch script nor a job on its way out is listed"
    assert (rows["41"]["phase"], rows["41"]["nodes"], rows["41"]["array_id"]) == ("pending", [], None)
    assert (rows["42"]["phase"], rows["42"]["nodes"], rows["42"]["array_id"]) == ("starting", ["gpu01", "gpu02"], "8125_3")
    assert rows["42"]["job_dir"] == str(tmp_path / "42") and rows["42"]["started_epoch"] > rows["41"]["started_epoch"]
