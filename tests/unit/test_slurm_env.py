import pytest

from vllm_hpc.errors import ConfigError, LaunchError
from vllm_hpc.slurm import check_launch, count_cuda_visible_devices, parse_tasks_per_node, read_slurm_env

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


def test_gpu_fallbacks_outside_slurm():
    assert read_slurm_env({}, "h", 8).gpus_on_node == 8
    assert read_slurm_env({}, "h", None).gpus_on_node == 0
    assert read_slurm_env({"SLURM_GPUS_ON_NODE": "4(x2)"}, "h", None).gpus_on_node == 4
    assert count_cuda_visible_devices("GPU-abc,GPU-def") == 2
    assert count_cuda_visible_devices("") == 0
    assert count_cuda_visible_devices("NoDevFiles") == 0


def test_inside_slurm_only_slurm_gives_gpus():
    """nvidia-smi on a node without device constraints sees other jobs' GPUs: never used in a job."""
    no_gpus = {k: v for k, v in JOB.items() if k != "SLURM_GPUS_ON_NODE"}
    env = read_slurm_env(no_gpus, "gpu02", 8)
    assert env.gpus_on_node == 0 and env.gpu_source.startswith("Slurm allocated none")


def test_the_smaller_of_slurm_and_cuda_visible_devices():
    env = read_slurm_env({**JOB, "CUDA_VISIBLE_DEVICES": "0,1"}, "gpu02", None)
    assert env.gpus_on_node == 2 and env.gpu_source.startswith("CUDA_VISIBLE_DEVICES, the smaller of SLURM_GPUS_ON_NODE=4")
    assert read_slurm_env({**JOB, "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}, "gpu02", None).gpus_on_node == 1


def test_mig_instances_count_once():
    """A CUDA process uses only the first MIG instance CUDA_VISIBLE_DEVICES lists."""
    cvd = "MIG-4b2d5e8a-1f3c-5d6e-9a0b-1c2d3e4f5a6b,MIG-7c8d9e0f-2a3b-4c5d-8e9f-0a1b2c3d4e5f"
    assert count_cuda_visible_devices(cvd) == 1
    assert read_slurm_env({**JOB, "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": cvd}, "gpu02", None).gpus_on_node == 1


def test_a_step_inside_a_larger_allocation_uses_the_steps_nodes():
    """`srun -N2` in a 4-node allocation: the job variables stay job-wide, NODEID is the step's."""
    env = {**JOB, "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "gpu[01-04]", "SLURM_STEP_ID": "1",
           "SLURM_STEP_NODELIST": "gpu[03-04]", "SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "0",
           "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURMD_NODENAME": "gpu03"}
    slurm = read_slurm_env(env, "gpu03", None)
    assert slurm.nodes == ("gpu03", "gpu04") and slurm.node_rank == 0 and slurm.leader == "gpu03"
    one = read_slurm_env({**env, "SLURM_STEP_NODELIST": "gpu02", "SLURM_STEP_NUM_NODES": "1", "SLURMD_NODENAME": "gpu02"}, "gpu02", None)
    assert one.nodes == ("gpu02",) and one.num_nodes == 1


def test_the_node_is_named_by_slurmd_nodename_not_the_hostname():
    """NodeName differs from the hostname where slurm.conf sets NodeHostname."""
    env = {**JOB, "SLURM_JOB_NODELIST": "gpu-a[01-03]", "SLURMD_NODENAME": "gpu-a03", "SLURM_NODEID": "2"}
    slurm = read_slurm_env(env, "c7-r3-n12.cluster.example", None)
    assert slurm.hostname == "gpu-a03" and slurm.node_rank == 2 and slurm.host == "c7-r3-n12"
    check_launch(slurm)


def test_tasks_per_node_forms():
    assert parse_tasks_per_node("1") == 1
    assert parse_tasks_per_node("1(x4)") == 1
    assert parse_tasks_per_node("2(x3),1") == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SLURM_STEP_TASKS_PER_NODE": "2(x3)"}, "2 tasks of this step run on one node"),
        ({"SLURM_STEP_ID": None}, "outside any srun step"),
        ({"SLURMD_NODENAME": "login1"}, "this host (login1) is not one of the job's nodes"),
    ],
)
def test_launches_that_cannot_form_a_server_are_refused(change, message):
    env = {**JOB, "SLURM_STEP_TASKS_PER_NODE": "1(x3)", "SLURMD_NODENAME": "gpu02"}
    env = {k: v for k, v in {**env, **change}.items() if v is not None}
    with pytest.raises(LaunchError) as err:
        check_launch(read_slurm_env(env, "gpu02", None))
    assert message in err.value.one_line() and err.value.exit_code == 13


def test_single_node_outside_a_step_and_outside_slurm_are_fine():
    one = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_NUM_NODES": "1", "SLURMD_NODENAME": "gpu01"}
    check_launch(read_slurm_env(one, "gpu01", None))
    check_launch(read_slurm_env({}, "laptop", None))


def test_rank_from_hostname_when_not_in_a_step():
    env = read_slurm_env({k: v for k, v in JOB.items() if k != "SLURM_NODEID"}, "gpu03", None)
    assert env.node_rank == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SLURM_GPUS_ON_NODE": "four"}, "SLURM_GPUS_ON_NODE='four' is not a number"),
        ({"SLURM_JOB_NUM_NODES": "2"}, "names 3 nodes"),
        ({"SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_STEP_NUM_NODES": "3"}, "SLURM_STEP_NUM_NODES=3 but the node list 'gpu[01-02]' names 2 nodes"),
        ({"SLURM_STEP_TASKS_PER_NODE": "two"}, "cannot read tasks per node"),
        ({"SLURM_JOB_NODELIST": "gpu[01-03"}, "cannot parse node list"),
    ],
)
def test_bad_slurm_values_are_named(change, message):
    with pytest.raises(ConfigError) as err:
        read_slurm_env({**JOB, **change}, "gpu01", None)
    assert message in err.value.one_line()
