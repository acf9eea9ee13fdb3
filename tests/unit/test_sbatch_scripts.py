"""The three sbatch scripts share one launcher (binds, walltime trap, lost-node end)."""

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SLURM = Path(__file__).resolve().parents[2] / "slurm"
MARK = "# ---- the same launcher in every vllm-hpc sbatch script ----"


def test_every_script_has_the_same_launcher_and_parses():
    scripts = sorted(SLURM.glob("*.sbatch"))
    assert len(scripts) == 3
    launchers = {}
    for script in scripts:
        text = script.read_text()
        assert MARK in text, script
        launchers[script.name] = text[text.index(MARK):]
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert len(set(launchers.values())) == 1, "edit the launcher in all three scripts alike"
