"""Planning: given this node's Slurm view, network choice, settings and options,
what will it run, with which environment? Pure: nothing here touches the machine.

The plan is what `vllm-hpc plan` prints and what `vllm-hpc serve` executes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import nccl
from .errors import ConfigError, ResourceError, UsageError
from .network import NetworkChoice
from .settings import SYMM_MEM_ALIAS, SYMM_MEM_REAL, Settings
from .slurm import SlurmEnv, check_launch

# Unix socket paths are limited to 107 bytes and Ray appends about 64 characters.
RAY_TMPDIR_MAX = 43
LOCAL_DEFAULT_PORT = 8000
# Per-job block of ports: below Linux's ephemeral range (32768+), 100 ports a job.
PORT_BLOCK_START = 10000
PORT_BLOCK_SIZE = 100
PORT_BLOCK_COUNT = 220
# Offsets inside a job's block.
PORT_OFFSETS = {
    "server": 0,
    "ray_gcs": 1,
    "ray_node_manager": 2,
    "ray_object_manager": 3,
    "ray_dashboard_agent": 4,
    "ray_dashboard_agent_grpc": 5,
    "ray_metrics": 6,
    "ray_runtime_env_agent": 7,
    "ray_client_server": 8,
    # Even with the dashboard off, a head starts a minimal dashboard process (127.0.0.1).
    "ray_dashboard": 9,
    # Set through environment variables of the head's `ray start`, not options.
    "ray_autoscaler_metrics": 10,
    "ray_dashboard_metrics": 11,
}
WORKER_PORT_FIRST, WORKER_PORT_LAST = 20, 99
# serve --fabric-check: how long the nodes wait for each other at the leader's address.
FABRIC_CHECK_MEET_S = 120.0

DEFAULT_JOIN_TIMEOUT = 600.0
DEFAULT_READY_TIMEOUT = 1800.0
DEFAULT_LIVENESS_INTERVAL = 60.0
DEFAULT_STOP_TIMEOUT = 10.0
# Kept back from the walltime so a stop can finish before Slurm kills the job.
WALLTIME_MARGIN = 60.0

# Options vllm-hpc sets itself; given after `--` they would fight the plan.
OWNED_VLLM_FLAGS = (
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "-pp",
    "--distributed-executor-backend",
)
SECRET_VLLM_FLAGS = ("--api-key",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ServeOptions:
    """What the user asked for on the command line."""

    model: str
    served_model_name: str | None = None
    host: str | None = None
    port: int | None = None
    interface: str | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    api_key_file: str | None = None
    no_api_key: bool = False
    dtype: str | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    join_timeout: float | None = None
    ready_timeout: float | None = None
    liveness_interval: float | None = None
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    compile_cache: str | None = None
    fabric_check: bool = False
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Secret:
    """An environment value read from a private file when the process starts."""

    path: str

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True)
class Command:
    name: str  # "ray-head", "ray-worker", "server"
    argv: tuple[str, ...]
    env: dict[str, str | Secret]  # added to the node's environment for this command
    log: str

    def shown(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class JobPaths:
    job_dir: str
    api_key: str
    ray_token: str
    leader: str  # rendezvous: where the leader publishes its fabric address and ports
    endpoint: str
    state: str
    stop_request: str  # written by the sbatch script on the walltime warning: an ordered stop
    node_lost: str  # written by the leader once stopped after a node's loss: the sbatch script ends the job
    log_dir: str  # this node's logs

    @staticmethod
    def for_job(home: Path, job_id: str, hostname: str) -> "JobPaths":
        job = home / "jobs" / job_id
        return JobPaths(
            job_dir=str(job),
            api_key=str(job / "api-key"),
            ray_token=str(job / "ray-token"),
            leader=str(job / "leader.json"),
            endpoint=str(job / "endpoint.json"),
            state=str(job / "state.json"),
            stop_request=str(job / "stop-request"),
            node_lost=str(job / "node-lost"),
            log_dir=str(job / "logs" / hostname),
        )


@dataclass(frozen=True)
class Deadlines:
    join: float
    ready: float
    liveness_interval: float  # 0: off
    stop: float


@dataclass(frozen=True)
class Plan:
    role: str  # "single", "leader" or "worker"
    job_id: str
    node_rank: int
    nodes: tuple[str, ...]
    leader: str
    hostname: str
    gpus_per_node: int
    gpu_source: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    interface: str
    interface_reason: str
    node_ip: str
    host: str
    port: int
    port_explicit: bool
    ports: dict[str, int]
    ray_tmpdir: str | None
    model: str
    served_model_name: str
    api_key: str  # "generated", "file", "environment" or "none"
    paths: JobPaths
    deadlines: Deadlines
    env: dict[str, str | Secret]  # set for every process of this node
    commands: tuple[Command, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def command(self, name: str) -> Command:
        return next(c for c in self.commands if c.name == name)

    def to_dict(self) -> dict:
        """JSON-ready, secrets shown as ***."""

        def shown_env(env: dict[str, str | Secret]) -> dict[str, str]:
            return {k: str(v) for k, v in sorted(env.items())}

        return {
            "role": self.role,
            "job_id": self.job_id,
            "node_rank": self.node_rank,
            "nodes": list(self.nodes),
            "leader": self.leader,
            "hostname": self.hostname,
            "gpus_per_node": self.gpus_per_node,
            "gpu_source": self.gpu_source,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "interface": self.interface,
            "interface_reason": self.interface_reason,
            "node_ip": self.node_ip,
            "host": self.host,
            "port": self.port,
            "ports": dict(self.ports),
            "ray_tmpdir": self.ray_tmpdir,
            "model": self.model,
            "served_model_name": self.served_model_name,
            "api_key": self.api_key,
            "job_dir": self.paths.job_dir,
            "log_dir": self.paths.log_dir,
            "deadlines": {
                "join_s": self.deadlines.join,
                "ready_s": self.deadlines.ready,
                "liveness_interval_s": self.deadlines.liveness_interval,
                "stop_s": self.deadlines.stop,
            },
            "commands": [list(c.argv) for c in self.commands],
            "command_env": {c.name: shown_env(c.env) for c in self.commands},
            "env": shown_env(self.env),
            "warnings": list(self.warnings),
        }


# A worker learns the leader's address and Ray port from leader.json at run time: the
# leader may have moved to another port block than the job id's.
LEADER_ADDRESS_PLACEHOLDER = "<leader fabric ip>:<leader Ray port>"


def port_block(job_id: str, base: int | None) -> int:
    if base is not None:
        return base
    digits = re.sub(r"\D", "", job_id) or "0"
    return PORT_BLOCK_START + (int(digits) % PORT_BLOCK_COUNT) * PORT_BLOCK_SIZE


def next_port_blocks(first: int) -> list[int]:
    """The other blocks, in the order a node tries them when ``first`` is busy."""
    index = (first - PORT_BLOCK_START) // PORT_BLOCK_SIZE
    return [PORT_BLOCK_START + ((index + k) % PORT_BLOCK_COUNT) * PORT_BLOCK_SIZE for k in range(1, PORT_BLOCK_COUNT)]


def owned_ports(role: str, ports: dict[str, int]) -> dict[str, int]:
    """The fixed ports this node's Ray binds (the server's port is checked on its own)."""
    owned = {name: port for name, port in ports.items() if name not in ("server", "ray_min_worker", "ray_max_worker")}
    if role == "worker":
        for head_only in ("ray_gcs", "ray_client_server", "ray_dashboard", "ray_autoscaler_metrics", "ray_dashboard_metrics"):
            owned.pop(head_only, None)
    return owned


def block_ports(first: int) -> dict[str, int]:
    ports = {name: first + offset for name, offset in PORT_OFFSETS.items()}
    ports["ray_min_worker"] = first + WORKER_PORT_FIRST
    ports["ray_max_worker"] = first + WORKER_PORT_LAST
    return ports


def check_model(model: str, exists: bool, has_config: bool, config_link: str | None = None,
                container: str | None = None) -> None:
    """``exists``/``has_config`` are observations of the file system made by the caller;
    ``config_link`` is where config.json points when it is a link that does not resolve;
    ``container`` the image this runs in (APPTAINER_CONTAINER), if any."""
    if exists and has_config:
        return
    inside = f" inside the container {container}" if container else " on this node"
    if exists and config_link:
        raise ConfigError(
            f"{model}/config.json is a link to {config_link}, which is not visible{inside}",
            "make the link targets visible too: for a Hugging Face cache snapshot, bind the whole models--ORG--NAME"
            " directory (apptainer --bind DIR; the sbatch scripts do this for --model)",
        )
    if exists:
        raise ConfigError(
            f"model directory {model} has no config.json",
            "point --model at the directory that holds config.json and the weights",
        )
    looks_local = model.startswith(("/", ".", "~")) or not HUB_ID.match(model)
    if looks_local and container:
        raise ConfigError(
            f"model path {model} is not visible{inside} (Apptainer binds only $HOME, the current directory and /tmp"
            " by default)",
            f"bind it: apptainer run --bind {model} ... (or its parent directory), or VLLM_HPC_BIND with the sbatch scripts",
        )
    if looks_local:
        raise ConfigError(
            f"model path {model} does not exist on {'this node'}",
            "give --model a directory readable on every node (shared file system) with config.json in it",
        )


def check_extra_args(extra: tuple[str, ...]) -> None:
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in SECRET_VLLM_FLAGS:
            raise UsageError(
                "--api-key on the command line is visible to every user in ps and squeue",
                "put the key in a file (--api-key-file) or VLLM_HPC_API_KEY, or let vllm-hpc generate one",
            )
        if flag in OWNED_VLLM_FLAGS:
            raise UsageError(
                f"{flag} after '--' conflicts with vllm-hpc's own option",
                f"give {flag} before '--' as a vllm-hpc serve option",
            )


def choose_parallel(
    options: ServeOptions, slurm: SlurmEnv, warnings: list[str]
) -> tuple[int, int]:
    nodes, gpus = slurm.num_nodes, slurm.gpus_on_node
    if nodes > 1 and gpus < 1:
        raise ResourceError(
            f"no GPUs visible on node {slurm.hostname} of a {nodes}-node job ({slurm.gpu_source})",
            "submit with --gpus-per-node=N (or --gres=gpu:N)",
        )
    tp = options.tensor_parallel_size
    pp = options.pipeline_parallel_size
    if nodes == 1:
        pp = pp or 1
        tp = tp or max(1, gpus // pp) if gpus else (tp or 1)
    else:
        pp = pp or (nodes if not tp or tp <= gpus else max(1, nodes * gpus // tp))
        tp = tp or max(1, nodes * gpus // pp)
    if tp < 1 or pp < 1:
        raise UsageError("tensor and pipeline parallel sizes must be at least 1", "drop them to use the defaults")
    world = nodes * gpus
    if gpus == 0:
        warnings.append(f"no GPUs visible ({slurm.gpu_source}): running as a CPU-only server")
        return tp, pp
    if tp * pp != world:
        if nodes == 1:
            hint = f"on one node with {gpus} GPUs use --tensor-parallel-size {gpus} (or TP x PP = {gpus})"
        else:
            hint = (
                f"with {nodes} nodes x {gpus} GPUs use --tensor-parallel-size {gpus} "
                f"--pipeline-parallel-size {nodes} (TP x PP must be {world})"
            )
        raise ResourceError(
            f"tensor parallel {tp} x pipeline parallel {pp} = {tp * pp} does not match the {world} GPUs allocated",
            hint + ", or change the allocation",
        )
    return tp, pp


def compute_deadlines(options: ServeOptions, settings: Settings, slurm: SlurmEnv, now: float) -> Deadlines:
    join = options.join_timeout or settings.join_timeout or DEFAULT_JOIN_TIMEOUT
    ready = options.ready_timeout or settings.ready_timeout or DEFAULT_READY_TIMEOUT
    live = options.liveness_interval
    if live is None:
        live = settings.liveness_interval if settings.liveness_interval is not None else DEFAULT_LIVENESS_INTERVAL
    left = slurm.seconds_left(now)
    if left is not None:
        cap = max(left - WALLTIME_MARGIN, 1.0)
        join, ready = min(join, cap), min(ready, cap)
    return Deadlines(join=join, ready=ready, liveness_interval=live, stop=options.stop_timeout)


def served_name(model: str, requested: str | None) -> str:
    if requested:
        return requested
    name = PurePosixPath(model.rstrip("/")).name
    return model if HUB_ID.match(model) and not model.startswith((".", "/")) else (name or model)


def build_vllm_argv(settings: Settings, options: ServeOptions, host: str, port: int, tp: int, pp: int, name: str, ray: bool) -> tuple[str, ...]:
    argv = [
        settings.python, "-m", settings.server_module,
        "--model", options.model,
        "--served-model-name", name,
        "--host", host,
        "--port", str(port),
        "--tensor-parallel-size", str(tp),
        "--pipeline-parallel-size", str(pp),
    ]  # fmt: skip
    if ray:
        argv += ["--distributed-executor-backend", "ray"]
    passthrough = (
        ("--dtype", options.dtype),
        ("--max-model-len", options.max_model_len),
        ("--max-num-batched-tokens", options.max_num_batched_tokens),
        ("--max-num-seqs", options.max_num_seqs),
        ("--gpu-memory-utilization", options.gpu_memory_utilization),
    )
    for flag, value in passthrough:
        if value is not None:
            argv += [flag, str(value)]
    argv += list(options.extra_args)
    return tuple(argv)


def build_ray_argv(settings: Settings, plan_ports: dict[str, int], node_ip: str, gpus: int, tmpdir: str, hostname: str, head: bool, leader_address: str) -> tuple[str, ...]:
    # Ray's own `ray start`, through vllm_hpc.raystart: without the CLI groups it only
    # lists (Serve, jobs, state), which cost every node seconds before its Ray started.
    argv = [settings.python, "-m", "vllm_hpc.raystart", "start", "--block"]
    if head:
        argv += [
            "--head",
            "--port", str(plan_ports["ray_gcs"]),
            "--ray-client-server-port", str(plan_ports["ray_client_server"]),
            "--dashboard-port", str(plan_ports["ray_dashboard"]),
            # Ray refuses --include-dashboard on a worker ("only ... with --head").
            "--include-dashboard=false",
            # No autoscaler monitor: a Slurm job's nodes are fixed. On the idle 2-core
            # test bed (`tests/bench/bench.py --only head`, medians of 3) a head alone is
            # ALIVE in Ray's node table after 7.03 s with the defaults, 5.62 s without
            # the dashboard, 5.26 s without the monitor too, and 4.54 s started through
            # vllm_hpc.raystart as well. The log monitor stays (4.77 s without it): it
            # carries the vLLM workers' output, on every node, into the server's log.
            # Ray's client server cannot be left out (Ray refuses port 0), nor the
            # agents the raylet starts.
            "--no-monitor",
        ]  # fmt: skip
    else:
        argv += ["--address", leader_address]
    argv += [
        "--node-ip-address", node_ip,
        "--node-name", hostname,
        "--num-gpus", str(gpus),
        "--temp-dir", tmpdir,
        "--disable-usage-stats",
        "--node-manager-port", str(plan_ports["ray_node_manager"]),
        "--object-manager-port", str(plan_ports["ray_object_manager"]),
        "--dashboard-agent-listen-port", str(plan_ports["ray_dashboard_agent"]),
        "--dashboard-agent-grpc-port", str(plan_ports["ray_dashboard_agent_grpc"]),
        "--metrics-export-port", str(plan_ports["ray_metrics"]),
        "--runtime-env-agent-port", str(plan_ports["ray_runtime_env_agent"]),
        "--min-worker-port", str(plan_ports["ray_min_worker"]),
        "--max-worker-port", str(plan_ports["ray_max_worker"]),
    ]  # fmt: skip
    return tuple(argv) + settings.ray_start_args


def ray_tmpdir_for(settings: Settings, job_id: str) -> str:
    tmpdir = f"{settings.ray_tmpdir_base.rstrip('/')}/vhpc-{job_id}"
    if len(tmpdir) > RAY_TMPDIR_MAX:
        raise ConfigError(
            f"Ray temp dir {tmpdir} is {len(tmpdir)} characters, over the {RAY_TMPDIR_MAX} that keep Ray's"
            " socket paths under 107 bytes",
            "set VLLM_HPC_RAY_TMPDIR to a short node-local directory such as /tmp",
        )
    return tmpdir


def build_plan(
    options: ServeOptions,
    settings: Settings,
    slurm: SlurmEnv,
    network: NetworkChoice,
    model_exists: bool,
    model_has_config: bool,
    now: float,
    model_config_link: str | None = None,
) -> Plan:
    """Decide everything this node will do. Raises a VllmHpcError on bad input."""
    warnings: list[str] = []
    check_launch(slurm)
    check_model(options.model, model_exists, model_has_config, model_config_link, settings.container)
    if not model_exists:
        warnings.append(f"{options.model} is not a local directory: vLLM will look it up as a model hub id")
    check_extra_args(options.extra_args)
    tp, pp = choose_parallel(options, slurm, warnings)
    multi = slurm.num_nodes > 1
    role = "single" if not multi else ("leader" if slurm.node_rank == 0 else "worker")

    first = port_block(slurm.job_id, settings.port_base)
    ports = block_ports(first)
    if options.port is not None:
        port, port_explicit = options.port, True
    else:
        port, port_explicit = (first if slurm.in_slurm else LOCAL_DEFAULT_PORT), False
    ports["server"] = port
    host = options.host or network.ip
    name = served_name(options.model, options.served_model_name)
    paths = JobPaths.for_job(settings.home, slurm.job_id, slurm.hostname)
    deadlines = compute_deadlines(options, settings, slurm, now)

    if options.no_api_key:
        api_key_mode = "none"
        warnings.append("--no-api-key: anyone who can reach the port can use the server")
    elif options.api_key_file or settings.api_key_file:
        api_key_mode = "file"
    elif settings.user_api_key_present:
        api_key_mode = "environment"
    else:
        api_key_mode = "generated"

    base = settings.base_env
    node_env: dict[str, str | Secret] = {"VLLM_HOST_IP": network.ip}
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        if not base.get(var):
            node_env[var] = network.interface
    if base.get(SYMM_MEM_ALIAS) and not base.get(SYMM_MEM_REAL):
        node_env[SYMM_MEM_REAL] = base[SYMM_MEM_ALIAS]
        warnings.append(f"{SYMM_MEM_ALIAS} is not a vLLM variable; using its value for {SYMM_MEM_REAL}")
    if not any(k.startswith("NCCL_DEBUG") for k in base):
        # NCCL's own account of the transport it chose, one file per process, read at
        # ready (nccl.py); a user's own NCCL_DEBUG* settings are left alone.
        node_env.update({"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET",
                         "NCCL_DEBUG_FILE": f"{paths.log_dir}/{nccl.LOG_PATTERN}"})
    compile_cache = options.compile_cache or settings.compile_cache
    if compile_cache:
        node_env["VLLM_CACHE_ROOT"] = compile_cache

    ray_tmpdir = None
    commands: list[Command] = []
    if multi:
        ray_tmpdir = ray_tmpdir_for(settings, slurm.job_id)
        if not base.get(SYMM_MEM_REAL) and SYMM_MEM_REAL not in node_env:
            # Symmetric-memory all-reduce deadlocks or fails across nodes.
            node_env[SYMM_MEM_REAL] = "0"
        node_env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": paths.ray_token,
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        leader_address = f"{network.ip}:{ports['ray_gcs']}" if role == "leader" else LEADER_ADDRESS_PLACEHOLDER
        ray_env: dict[str, str | Secret] = {
            # A stop that reaches every process at once (scancel) would otherwise wait
            # 30 s for a drain; a loaded node needs longer than 30 s to register its agent.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3",
            "RAY_agent_register_timeout_ms": "120000",
        }
        if role == "leader":
            # Notice a dead node in about 4 s instead of Ray's default 16 s or more.
            ray_env.update(
                {
                    "RAY_health_check_period_ms": "1000",
                    "RAY_health_check_failure_threshold": "3",
                    "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_initial_delay_ms": "1000",
                    "AUTOSCALER_METRIC_PORT": str(ports["ray_autoscaler_metrics"]),
                    "DASHBOARD_METRIC_PORT": str(ports["ray_dashboard_metrics"]),
                }
            )
        else:
            # A worker's raylet gives up on a vanished head after 10 s, not 60 s.
            ray_env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "10"
        ray_name = "ray-head" if role == "leader" else "ray-worker"
        commands.append(
            Command(
                ray_name,
                build_ray_argv(settings, ports, network.ip, slurm.gpus_on_node, ray_tmpdir, slurm.hostname, role == "leader", leader_address),
                ray_env,
                f"{paths.log_dir}/{ray_name}.log",
            )
        )
    if multi and options.fabric_check:
        # Every node, before Ray and vLLM: the same test as `doctor --fabric`, in a child
        # process so that no CUDA context of it stays on the GPU vLLM is about to fill.
        meet = min(deadlines.join, FABRIC_CHECK_MEET_S)
        commands.insert(0, Command(
            "fabric-check",
            (settings.python, "-m", "vllm_hpc", "doctor", "--fabric", "--interface", network.interface,
             "--fabric-timeout", f"{meet:g}"),
            {},
            f"{paths.log_dir}/fabric-check.log",
        ))  # fmt: skip
    if role in ("single", "leader"):
        server_env: dict[str, str | Secret] = {}
        if api_key_mode != "none":
            server_env["VLLM_API_KEY"] = Secret(paths.api_key)
        if multi:
            server_env["RAY_ADDRESS"] = f"{network.ip}:{ports['ray_gcs']}"
        commands.append(
            Command(
                "server",
                build_vllm_argv(settings, options, host, port, tp, pp, name, ray=multi),
                server_env,
                f"{paths.log_dir}/server.log",
            )
        )
    return Plan(
        role=role,
        job_id=slurm.job_id,
        node_rank=slurm.node_rank,
        nodes=slurm.nodes,
        leader=slurm.leader,
        hostname=slurm.hostname,
        gpus_per_node=slurm.gpus_on_node,
        gpu_source=slurm.gpu_source,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        interface=network.interface,
        interface_reason=network.reason,
        node_ip=network.ip,
        host=host,
        port=port,
        port_explicit=port_explicit,
        ports=ports if multi else {"server": port},
        ray_tmpdir=ray_tmpdir,
        model=options.model,
        served_model_name=name,
        api_key=api_key_mode,
        paths=paths,
        deadlines=deadlines,
        env=node_env,
        commands=tuple(commands),
        warnings=tuple(warnings),
    )


def render_plan(plan: Plan) -> str:
    """The plan for a person to read."""
    lines = [
        f"job {plan.job_id}: node {plan.hostname} (rank {plan.node_rank} of {len(plan.nodes)}) is the {plan.role}",
        f"  nodes         {', '.join(plan.nodes)} (leader {plan.leader})",
        f"  GPUs per node {plan.gpus_per_node} (from {plan.gpu_source})",
        f"  parallelism   tensor {plan.tensor_parallel_size} x pipeline {plan.pipeline_parallel_size}",
        f"  network       {plan.interface} {plan.node_ip} ({plan.interface_reason})",
        f"  server        http://{plan.host}:{plan.port}/v1  model {plan.served_model_name}  API key: {plan.api_key}",
        f"  job dir       {plan.paths.job_dir}",
    ]
    if plan.ray_tmpdir:
        lines.append(f"  Ray temp dir  {plan.ray_tmpdir}")
    lines.append("  environment")
    lines += [f"    {k}={v}" for k, v in sorted(plan.env.items())]
    for command in plan.commands:
        lines.append(f"  runs ({command.name})")
        lines += [f"    {k}={v}" for k, v in sorted(command.env.items())]
        lines.append(f"    {command.shown()}")
    lines += [f"  warning: {w}" for w in plan.warnings]
    return "\n".join(lines)
