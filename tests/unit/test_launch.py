"""launch composes the sbatch line of the project's own scripts (pure; the bed submits it)."""

from pathlib import Path

import pytest

from vllm_hpc.errors import ConfigError, ResourceError
from vllm_hpc.launch import compose, read_defaults

pytestmark = pytest.mark.unit

SCRIPTS = {"scripts": "/opt/vllm-hpc/slurm"}


def test_the_shape_picks_the_script():
    one = compose("/m", 1, 1, {}, SCRIPTS, ())
    assert one.configuration == "single-gpu" and one.argv == ("sbatch", "--parsable", "/opt/vllm-hpc/slurm/single-gpu.sbatch", "--model", "/m")
    node = compose("/m", 1, 4, {}, SCRIPTS, ())
    assert node.argv[:3] == ("sbatch", "--parsable", "--gpus-per-node=4") and node.script.endswith("/single-node.sbatch")
    cpu = compose("/m", 1, 0, {}, SCRIPTS, ())
    assert cpu.configuration == "single-node" and "--gpus-per-node=0" not in cpu.argv
    many = compose("/m", 3, 8, {"partition": "gpu", "time": "8:00:00"}, SCRIPTS, ("--served-model-name", "x", "--", "--enforce-eager"))
    assert many.argv == ("sbatch", "--parsable", "--nodes=3", "--gpus-per-node=8", "--partition=gpu", "--time=8:00:00",
                         "/opt/vllm-hpc/slurm/multinode.sbatch", "--model", "/m", "--served-model-name", "x", "--", "--enforce-eager")


def test_gpus_the_configuration_cannot_use_are_refused():
    with pytest.raises(ResourceError) as err:
        compose("/m", 2, 0, {}, SCRIPTS, ())
    assert "needs GPUs on every node" in err.value.one_line() and err.value.exit_code == 4


def test_site_defaults_fill_in_and_the_command_line_wins(tmp_path):
    (tmp_path / "defaults").write_text("# site\npartition = gpu\naccount=proj1\nimage = /shared/vllm-hpc.sif\ngpus_per_node = 4\n")
    defaults = read_defaults({"VLLM_HPC_ACCOUNT": "proj2"}, tmp_path)
    assert defaults == {"partition": "gpu", "account": "proj2", "image": "/shared/vllm-hpc.sif", "gpus_per_node": "4"}
    sub = compose("/m", 2, None, {"partition": "big", "bind": "/scratch"}, {**defaults, **SCRIPTS}, ())
    assert "--partition=big" in sub.argv and "--account=proj2" in sub.argv and "--gpus-per-node=4" in sub.argv
    assert sub.env == {"VLLM_HPC_IMAGE": "/shared/vllm-hpc.sif", "VLLM_HPC_BIND": "/scratch"}
    assert sub.shown().startswith("VLLM_HPC_BIND=/scratch VLLM_HPC_IMAGE=/shared/vllm-hpc.sif sbatch --parsable")


def test_a_bad_defaults_line_is_named(tmp_path):
    (tmp_path / "defaults").write_text("partition gpu\n")
    with pytest.raises(ConfigError) as err:
        read_defaults({}, tmp_path)
    assert "line 1" in err.value.one_line() and "partition" in err.value.one_line()


def test_the_default_scripts_are_this_checkouts():
    sub = compose("/m", 1, 1, {}, {}, ())
    assert Path(sub.script).is_file() and Path(sub.script).parent.name == "slurm"
