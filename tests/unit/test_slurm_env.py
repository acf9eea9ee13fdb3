import pytest

from vllm_hpc.errors import ConfigError
from vllm_hpc.slurm import count_cuda_visible_devices, read_slurm_env

pytestmark = pytest.mark.unit

JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NUM_NODES": "3",
    "SLURM_JOB_NODELIST": "gpu[01-03]",
    "SLURM_GPUS_ON_NODE": "4",
    "SLURM_JOB_END_TIME": "1900000000",
    "SLURM_STEP_ID": "0",
}


def test_reads_a_multinode_job():
    env = read_slurm_env(JOB, "gpu02.cluster.example", None)
    assert env.in_slurm and env.job_id == "4242"
    assert env.nodes == ("gpu01", "gpu02", "gpu03")
    assert env.node_rank == 1 and env.leader == "gpu01" and env.hostname == "gpu02"
    assert env.gpus_on_node == 4 and env.gpu_source == "SLURM_GPUS_ON_NODE"
    assert env.end_time == 1900000000
    assert env.seconds_left(1899999900) == 100


def test_outside_slurm_is_a_single_local_node():
    env = read_slurm_env({"CUDA_VISIBLE_DEVICES": "0,1"}, "laptop", None)
    assert not env.in_slurm and env.nodes == ("laptop",) and env.node_rank == 0
    assert env.gpus_on_node == 2 and env.gpu_source == "CUDA_VISIBLE_DEVICES"


def test_gpu_fallbacks():
    assert read_slurm_env({}, "h", 8).gpus_on_node == 8
    assert read_slurm_env({}, "h", None).gpus_on_node == 0
    assert read_slurm_env({"SLURM_GPUS_ON_NODE": "4(x2)"}, "h", None).gpus_on_node == 4
    assert count_cuda_visible_devices("GPU-abc,GPU-def") == 2
    assert count_cuda_visible_devices("") == 0
    assert count_cuda_visible_devices("NoDevFiles") == 0


def test_rank_from_hostname_when_not_in_a_step():
    env = read_slurm_env({k: v for k, v in JOB.items() if k != "SLURM_NODEID"}, "gpu03", None)
    assert env.node_rank == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SLURM_GPUS_ON_NODE": "four"}, "SLURM_GPUS_ON_NODE='four' is not a number"),
        ({"SLURM_JOB_NUM_NODES": "2"}, "names 3 nodes"),
        ({"SLURM_NODEID": "5"}, "SLURM_NODEID=5"),
        ({"SLURM_JOB_NODELIST": "gpu[01-03"}, "cannot parse node list"),
    ],
)
def test_bad_slurm_values_are_named(change, message):
    with pytest.raises(ConfigError) as err:
        read_slurm_env({**JOB, **change}, "gpu01", None)
    assert message in err.value.one_line()
