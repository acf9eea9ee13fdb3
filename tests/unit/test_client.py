import pytest

from vllm_hpc.client import _phase

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
    ],
)
def test_phase_from_state_and_slurm(state, queue, known, phase):
    assert _phase(state, queue, known) == phase
