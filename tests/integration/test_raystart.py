"""vllm_hpc.raystart: Ray's own CLI, without the command groups a serving node never uses.

Every multi-node test starts its Ray heads and workers through it; these check what it
leaves out, against Ray's plain CLI in the same environment (the bed's, with vLLM's
packages, pandas among them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

LEFT_OUT = ("ray.serve", "ray.dashboard.modules.job.cli", "ray.util.state.state_cli", "pandas")


def imported_by_rays_cli(leave_out: bool) -> set[str]:
    setup = "from vllm_hpc.raystart import leave_out_optional_groups; leave_out_optional_groups(); " if leave_out else ""
    probe = f"import sys; {setup}import ray.scripts.scripts; print(' '.join(m for m in {LEFT_OUT!r} if sys.modules.get(m) is not None))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_rays_cli_loads_its_optional_groups_and_raystart_leaves_them_out():
    assert {"ray.dashboard.modules.job.cli", "ray.util.state.state_cli"} <= imported_by_rays_cli(leave_out=False)
    assert imported_by_rays_cli(leave_out=True) == set()


def test_ray_start_keeps_its_options():
    result = subprocess.run([sys.executable, "-m", "vllm_hpc.raystart", "start", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ray start"), result.stdout[:200]
    for option in ("--head", "--block", "--include-dashboard", "--node-ip-address", "--temp-dir"):
        assert option in result.stdout, option
