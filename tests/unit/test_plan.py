import json

import pytest

from vllm_hpc.errors import ConfigError, ResourceError, UsageError
from vllm_hpc.network import NetworkChoice
from vllm_hpc.plan import LEADER_ADDRESS_PLACEHOLDER, Secret, ServeOptions, build_plan, port_block, render_plan
from vllm_hpc.settings import read_settings
from vllm_hpc.slurm import read_slurm_env

pytestmark = pytest.mark.unit

IB = NetworkChoice("ib0", "10.10.0.2", "fabric name ib*")


def job_env(rank=0, nodes="gpu[01-02]", count=2, gpus="4", **extra):
    env = {
        "HOME": "/home/u",
        "SLURM_JOB_ID": "7001",
        "SLURM_NODEID": str(rank),
        "SLURM_JOB_NUM_NODES": str(count),
        "SLURM_JOB_NODELIST": nodes,
        "SLURM_GPUS_ON_NODE": gpus,
        "SLURM_STEP_ID": "0",  # under srun, as the sbatch scripts run it
    }
    env.update(extra)
    return env


def make(options=None, env=None, host="gpu01", network=IB, exists=True, config=True, now=1000.0):
    env = env if env is not None else job_env()
    options = options or ServeOptions(model="/models/llama")
    settings = read_settings(env)
    slurm = read_slurm_env(env, host, None)
    return build_plan(options, settings, slurm, network, exists, config, now)


def test_leader_plan_multi_node():
    plan = make()
    assert plan.role == "leader" and plan.nodes == ("gpu01", "gpu02") and plan.leader == "gpu01"
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 2)
    assert [c.name for c in plan.commands] == ["ray-head", "server"]
    head, server = plan.commands
    assert head.argv[1:5] == ("-m", "vllm_hpc.raystart", "start", "--block") and head.argv[0] == server.argv[0]
    assert "--head" in head.argv and head.argv[head.argv.index("--node-ip-address") + 1] == "10.10.0.2"
    assert head.argv[head.argv.index("--num-gpus") + 1] == "4"
    assert "--include-dashboard=false" in head.argv and "--no-monitor" in head.argv
    assert head.argv[head.argv.index("--temp-dir") + 1] == "/tmp/vhpc-7001"
    argv = list(server.argv)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--host") + 1] == "10.10.0.2"
    assert server.env["RAY_ADDRESS"] == f"10.10.0.2:{plan.ports['ray_gcs']}"
    assert plan.env["VLLM_HOST_IP"] == "10.10.0.2"
    assert plan.env["NCCL_SOCKET_IFNAME"] == plan.env["GLOO_SOCKET_IFNAME"] == "ib0"
    assert plan.env["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0"
    assert plan.env["RAY_AUTH_MODE"] == "token"
    assert plan.env["RAY_AUTH_TOKEN_PATH"] == "/home/u/.vllm-hpc/jobs/7001/ray-token"
    assert isinstance(server.env["VLLM_API_KEY"], Secret)
    assert "--api-key" not in argv


def test_worker_plan_joins_the_leader():
    plan = make(env=job_env(rank=1), host="gpu02", network=NetworkChoice("ib0", "10.10.0.3", "x"))
    assert plan.role == "worker" and plan.node_rank == 1
    assert [c.name for c in plan.commands] == ["ray-worker"]
    argv = plan.commands[0].argv
    # The leader's address and Ray port come from leader.json: the leader may have moved blocks.
    assert argv[argv.index("--address") + 1] == LEADER_ADDRESS_PLACEHOLDER
    assert "--head" not in argv
    assert plan.commands[0].env["RAY_gcs_rpc_server_reconnect_timeout_s"] == "10"


def test_single_node_has_no_ray_and_defaults_tp_to_gpus():
    plan = make(env=job_env(nodes="gpu01", count=1, gpus="8"))
    assert plan.role == "single" and (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 1)
    assert [c.name for c in plan.commands] == ["server"]
    assert "--distributed-executor-backend" not in plan.commands[0].argv
    assert "RAY_AUTH_MODE" not in plan.env and plan.ray_tmpdir is None


def test_outside_slurm_uses_port_8000_and_cpu_warning():
    plan = make(env={"HOME": "/h"}, host="laptop")
    assert plan.role == "single" and plan.port == 8000 and plan.job_id.startswith("local-")
    assert any("no GPUs" in w for w in plan.warnings)


def test_user_nccl_values_pass_through_untouched():
    plan = make(env=job_env(NCCL_SOCKET_IFNAME="=ib1", NCCL_IB_HCA="mlx5_0"))
    assert "NCCL_SOCKET_IFNAME" not in plan.env  # the user's value stays in the inherited environment
    assert plan.env["GLOO_SOCKET_IFNAME"] == "ib0"


def test_nccl_reports_its_transport_into_the_nodes_log_dir_unless_the_user_set_nccl_debug():
    plan = make()
    assert (plan.env["NCCL_DEBUG"], plan.env["NCCL_DEBUG_SUBSYS"]) == ("INFO", "INIT,NET")
    assert plan.env["NCCL_DEBUG_FILE"] == "/home/u/.vllm-hpc/jobs/7001/logs/gpu01/nccl.%h.%p.log"
    for user in ({"NCCL_DEBUG": "WARN"}, {"NCCL_DEBUG_FILE": "/scratch/n.%p"}):
        assert not any(k.startswith("NCCL_DEBUG") for k in make(env=job_env(**user)).env)


def test_symmetric_memory_alias():
    plan = make(env=job_env(VLLM_USE_SYMMETRIC_MEMORY="1"))
    assert plan.env["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "1"
    assert any("VLLM_USE_SYMMETRIC_MEMORY" in w for w in plan.warnings)
    assert "VLLM_ALLREDUCE_USE_SYMM_MEM" not in make(env=job_env(VLLM_ALLREDUCE_USE_SYMM_MEM="1")).env


def test_parallel_sizes_must_match_allocation():
    with pytest.raises(ResourceError) as err:
        make(options=ServeOptions(model="/m", tensor_parallel_size=2))
    text = err.value.one_line()
    assert "does not match the 8 GPUs" in text and "--tensor-parallel-size 4 --pipeline-parallel-size 2" in text
    plan = make(options=ServeOptions(model="/m", tensor_parallel_size=8))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 1)


def test_no_gpus_on_a_multinode_job():
    with pytest.raises(ResourceError, match="no GPUs visible on node gpu01"):
        make(env=job_env(gpus="0"))


def test_model_checks():
    with pytest.raises(ConfigError, match="does not exist"):
        make(exists=False, config=False)
    with pytest.raises(ConfigError, match="no config.json"):
        make(exists=True, config=False)
    hub = make(options=ServeOptions(model="meta-llama/Llama-3.1-8B"), exists=False, config=False)
    assert hub.served_model_name == "meta-llama/Llama-3.1-8B"
    assert any("model hub" in w for w in hub.warnings)


@pytest.mark.parametrize("extra, message", [(("--api-key", "x"),"visible to every user"), (("--api-key=x",), "visible"), (("--tensor-parallel-size", "2"), "conflicts")])
def test_vllm_args_that_would_leak_or_fight(extra, message):
    with pytest.raises(UsageError, match=message):
        make(options=ServeOptions(model="/m", extra_args=extra))


def test_passthrough_and_extra_args_keep_their_order():
    options = ServeOptions(model="/m", dtype="bfloat16", max_num_seqs=64, gpu_memory_utilization=0.9, extra_args=("--enforce-eager",))
    argv = make(options=options).command("server").argv
    assert argv[-7:] == ("--dtype", "bfloat16", "--max-num-seqs", "64", "--gpu-memory-utilization", "0.9", "--enforce-eager")


def test_ports_differ_between_jobs_and_avoid_ephemeral_range():
    a, b = port_block("7001", None), port_block("7002", None)
    assert a != b and 10000 <= a < 32768 - 100 and 10000 <= b < 32768 - 100
    assert port_block("7001", 40000) == 40000
    ports = make().ports
    assert len(set(ports.values())) == len(ports)


def test_deadlines_capped_by_walltime():
    plan = make(env=job_env(SLURM_JOB_END_TIME="1500"), now=1000.0)
    assert plan.deadlines.join == 440.0 and plan.deadlines.ready == 440.0


def test_ray_tmpdir_too_long_is_refused():
    with pytest.raises(ConfigError, match="over the 43"):
        make(env=job_env(VLLM_HPC_RAY_TMPDIR="/very/long/node/local/scratch/directory/path"))


def test_plan_json_hides_secrets_and_has_the_documented_keys():
    data = make().to_dict()
    for key in ("role", "node_rank", "nodes", "leader", "gpus_per_node", "tensor_parallel_size", "pipeline_parallel_size", "interface", "node_ip", "commands", "env"):
        assert key in data
    assert data["command_env"]["server"]["VLLM_API_KEY"] == "***"
    json.dumps(data)
    assert "***" in render_plan(make())


def test_api_key_modes():
    assert make().api_key == "generated"
    assert make(env=job_env(VLLM_HPC_API_KEY="s3cret")).api_key == "environment"
    assert make(options=ServeOptions(model="/m", api_key_file="/k")).api_key == "file"
    open_plan = make(options=ServeOptions(model="/m", no_api_key=True))
    assert open_plan.api_key == "none" and "VLLM_API_KEY" not in open_plan.command("server").env
    assert "s3cret" not in json.dumps(make(env=job_env(VLLM_HPC_API_KEY="s3cret")).to_dict())


def test_site_ray_start_args_are_appended():
    plan = make(env=job_env(VLLM_HPC_RAY_START_ARGS="--object-store-memory 200000000 --resources '{\"x\": 1}'"))
    assert plan.command("ray-head").argv[-4:] == ("--object-store-memory", "200000000", "--resources", '{"x": 1}')


def test_next_port_blocks_wrap_and_skip_the_first():
    from vllm_hpc.plan import PORT_BLOCK_COUNT, next_port_blocks, owned_ports, block_ports

    first = port_block("7001", None)
    blocks = next_port_blocks(first)
    assert len(blocks) == PORT_BLOCK_COUNT - 1 and first not in blocks
    assert blocks[0] == first + 100 or blocks[0] == 10000
    assert all(10000 <= b <= 31900 for b in blocks)
    # A worker binds no head-only port; the head binds its GCS port.
    assert "ray_gcs" not in owned_ports("worker", block_ports(first))
    assert owned_ports("leader", block_ports(first))["ray_gcs"] == first + 1


def test_an_exported_ray_token_does_not_replace_the_jobs():
    """Ray prefers RAY_AUTH_TOKEN over RAY_AUTH_TOKEN_PATH: a user's exported one must not reach the job's Ray."""
    import sys

    from vllm_hpc.serve import NodeRun
    from vllm_hpc.supervisor import Reporter

    env = job_env(RAY_AUTH_TOKEN="exported-token")
    plan = make(env=env)
    run = NodeRun(plan, read_settings(env), ServeOptions(model="/models/llama"), read_slurm_env(env, "gpu01", None),
                  Reporter(sys.stderr, "test"))
    child = run._env("ray-head")
    assert "RAY_AUTH_TOKEN" not in child
    assert child["RAY_AUTH_TOKEN_PATH"] == "/home/u/.vllm-hpc/jobs/7001/ray-token"
    assert read_settings(env).base_env["RAY_AUTH_TOKEN"] == "exported-token"  # the check above can fail


def test_other_step_serving_only_for_a_live_step_of_the_same_start():
    from vllm_hpc.serve import other_step_serving

    now = 1000.0
    ready = {"phase": "ready", "run": "0.0", "started_epoch": 10.0}
    assert other_step_serving(ready, "0.1", now, 600, answers=True) == "0"
    assert other_step_serving(ready, "0.1", now, 600, answers=False) is None  # died without saying so
    assert other_step_serving(ready, "0.0", now, 600, answers=True) is None  # this very step
    assert other_step_serving(ready, "1.0", now, 600, answers=True) is None  # a requeue starts afresh
    starting = {"phase": "starting", "run": "0.0", "started_epoch": 900.0}
    assert other_step_serving(starting, "0.1", now, 600, answers=False) == "0"
    assert other_step_serving(starting, "0.1", now, 50, answers=False) is None  # past its deadlines
    for phase in ("failed", "stopped"):
        assert other_step_serving({**ready, "phase": phase}, "0.1", now, 600, answers=True) is None
    assert other_step_serving({}, "0.1", now, 600, answers=True) is None


def test_fabric_check_runs_doctor_fabric_first_on_every_node_of_a_multi_node_job():
    plan = make(options=ServeOptions(model="/m", fabric_check=True))
    assert [c.name for c in plan.commands] == ["fabric-check", "ray-head", "server"]
    argv = plan.command("fabric-check").argv
    assert argv[1:6] == ("-m", "vllm_hpc", "doctor", "--fabric", "--interface") and argv[6] == "ib0"
    assert "fabric-check" not in [c.name for c in make().commands]

