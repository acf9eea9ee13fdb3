"""Carrying out a plan on this node: the single server, the leader or a worker."""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from . import jobfiles, nccl
from .errors import ChildDiedError, ClusterError, JobFailedError, LaunchError, NodeLostError, Signalled, VllmHpcError
from .network import tcp_open
from .plan import FABRIC_CHECK_MEET_S, LEADER_ADDRESS_PLACEHOLDER, Plan, ServeOptions
from .readiness import LivenessWatcher, probe_url, wait_for_ready
from .settings import ENV_API_KEY, Settings
from .slurm import SlurmEnv
from .supervisor import RAY_STOP_AFTER_NODE_LOSS_S, RAY_STOP_TIMEOUT_S, Reporter, Supervisor, resolve_env, stop_process_tree, wait_for

# A worker's Ray that ran this long had joined; its end then means the leader went away.
WORKER_JOINED_AFTER_S = 20.0
RAY_HEAD_UP_TIMEOUT_S = 120.0
# How long a dying server's leader waits for Ray to say whether a node was lost.
NODE_LOSS_GRACE_S = 4.0
# srun starts a job's nodes within seconds of each other; a leader file older than
# this before a node's own start is from an earlier run.
RUN_START_SKEW_S = 120.0
# Every node of the job writes its log into the job directory at once; a node whose log
# is missing there this long after the start sees another directory (not shared).
SHARED_HOME_CHECK_S = 60.0


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def written_by_run(data: dict, generation: str, run_started: float) -> bool:
    """Pure: whether a file the leader published (leader.json, state.json,
    fabric-leader.json) is of this run: the same restart and step, written after this
    node's start less the nodes' start skew."""
    published = data.get("started_epoch") or data.get("published_epoch") or 0
    return str(data.get("run")) == generation and published >= run_started - RUN_START_SKEW_S


def wait_for_published(supervisor: Supervisor, path: str, generation: str, run_started: float, what: str,
                       deadline_s: float, fix: str, check: Callable[[], None] | None = None) -> dict:
    """Until the leader has published ``path`` for this run (bounded, with progress);
    ``check`` may raise to end the wait early. Returns the file's data."""
    found: dict = {}

    def probe() -> tuple[bool, str]:
        if check is not None:
            check()
        try:
            data = jobfiles.read_json(path)
        except VllmHpcError:
            data = None
        if not data:
            return False, f"no {path} yet"
        if not written_by_run(data, generation, run_started):
            return False, "only an address left by an earlier run"
        found.update(data)
        port = f":{data['ray_gcs']}" if data.get("ray_gcs") else ""
        return True, f"leader {data.get('hostname')} at {data.get('ip')}{port}"

    # The leader publishes within about a second of its start and every node waits on
    # it: a short poll (an open of a small file) saves a worker up to half a second.
    wait_for(supervisor, what, probe, deadline_s, ClusterError, fix, interval=0.1)
    return found


def other_step_serving(state: dict, generation: str, now: float, starting_for: float, answers: bool) -> str | None:
    """The step of this job (same start, other srun) whose server is up or still starting,
    if any: one job serves one model, and a second server would take its key, endpoint
    and state. A step that died without saying so counts as starting only until its
    deadlines have passed. Pure: ``answers`` is whether its endpoint answers."""
    restart, _, step = str(state.get("run", "")).partition(".")
    ours_restart, _, ours_step = generation.partition(".")
    if restart != ours_restart or step == ours_step or not step:
        return None
    phase = state.get("phase")
    if phase == "ready" and answers:
        return step
    if phase == "starting" and now - float(state.get("started_epoch") or 0) < starting_for:
        return step
    return None


# A worker stops on its own this long after a stop request when the leader never says
# it stopped (the leader's node may be the one in trouble).
WORKER_STOP_WAIT_S = 30.0


class StopRequestWatcher(threading.Thread):
    """The walltime warning as the sbatch scripts pass it on, and `vllm-hpc stop`: a stop-request file in the
    job directory, so that only vllm-hpc hears it and stops the server, then Ray, in
    order (a signal to the step would reach vLLM and Ray at the same moment)."""

    def __init__(self, supervisor: Supervisor, path: str, since: float, interval: float = 1.0) -> None:
        super().__init__(name="stop-request", daemon=True)
        self.supervisor, self.path, self.since, self.interval = supervisor, path, since, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            if _written_since(Path(self.path), self.since):
                self.supervisor.reporter.say("stop requested (the walltime warning or vllm-hpc stop): stopping the server, then Ray")
                self.supervisor.fail(Signalled(signal.SIGUSR1, "a stop request"))
                return


class NodeRun:
    """One node's part of the job, from secrets to stop."""

    def __init__(self, plan: Plan, settings: Settings, options: ServeOptions, slurm: SlurmEnv, reporter: Reporter) -> None:
        self.plan, self.settings, self.options, self.slurm = plan, settings, options, slurm
        self.reporter = reporter
        self.supervisor = Supervisor(reporter)
        self.watchers: list = []
        self.api_key: str | None = None
        self.ray_connected = False
        # Files of the job directory written before this (minus the nodes' start skew)
        # belong to an earlier run: a requeue, or an earlier job with the same id.
        self.run_started = time.time()

    # -- entry ---------------------------------------------------------------
    def run(self) -> int:
        plan = self.plan
        # Everything this node and its children write (logs, Ray's session files) is private.
        os.umask(0o077)
        jobfiles.make_private_dir(plan.paths.log_dir)
        if plan.role != "worker":
            # Before anything is written: the other step's files stay as they are.
            self._refuse_a_second_server()
        self.supervisor.install_signal_handlers()
        failure: VllmHpcError | None = None
        try:
            if plan.role == "worker":
                self._run_worker()
            else:
                self._run_server()
            return 0
        except Signalled as stop:
            self.reporter.say(f"{stop.problem}: stopping this node")
            self._set_state("stopped", reason=stop.problem)
            # The walltime warning (a stop request from the sbatch script, or USR1 sent to
            # vllm-hpc itself) is a planned, clean end.
            if stop.signum == signal.SIGUSR1:
                return 0
            raise
        except VllmHpcError as err:
            err = self._root_cause(err)
            # Said before the stop, which Slurm may cut short once other nodes are gone.
            self.reporter.say(f"error: {err.one_line()}")
            self._set_state("failed", reason=err.one_line(), node=plan.hostname)
            failure = err
            raise err from None
        finally:
            self._shutdown(RAY_STOP_AFTER_NODE_LOSS_S if isinstance(failure, NodeLostError) else RAY_STOP_TIMEOUT_S)
            if plan.role == "leader" and isinstance(failure, NodeLostError):
                self._ask_slurm_to_end_job(failure)

    def _ask_slurm_to_end_job(self, err: NodeLostError) -> None:
        """srun waits for a lost node's task until Slurm declares the node down (its
        SlurmdTimeout, minutes on real clusters), keeping the other nodes allocated: with
        this node stopped, tell the sbatch script the nodes left and why; it shrinks the
        job to them and ends it now."""
        path = self.plan.paths.node_lost
        survivors = ",".join(n for n in self.plan.nodes if n not in err.nodes)
        try:
            jobfiles.write_private(path, f"{survivors}\n{err.one_line()}\n")
        except OSError as problem:
            self.reporter.say(f"could not write {path} ({problem}): Slurm ends the job when it declares the node down")
            return
        self.reporter.say(f"asked the batch script to end the job on {survivors} now, not at Slurm's SlurmdTimeout")

    def _root_cause(self, err: VllmHpcError) -> VllmHpcError:
        """A server that died with its Ray cluster usually died of a lost node: name it."""
        if not isinstance(err, ChildDiedError) or not self.watchers or self.supervisor.failure:
            return self.supervisor.failure or err
        deadline = time.monotonic() + NODE_LOSS_GRACE_S
        while time.monotonic() < deadline and self.supervisor.failure is None:
            time.sleep(0.1)
        return self.supervisor.failure or err

    def _start_run_state(self) -> None:
        """A new run starts from a clean slate: nothing of an earlier run (its endpoint,
        its failure reason) may be shown as current."""
        plan = self.plan
        Path(plan.paths.endpoint).unlink(missing_ok=True)
        run = {
            "job_id": plan.job_id,
            "array_id": self.slurm.array_id,
            "run": self.slurm.generation,
            "started": jobfiles.now_iso(),
            "started_epoch": self.run_started,
            "nodes": list(plan.nodes),
            "leader": plan.hostname,
            "log_dir": str(Path(plan.paths.log_dir).parent),
        }
        jobfiles.update_state(plan.paths.state, "starting", fresh=True, **{k: v for k, v in run.items() if v is not None})

    def _current(self, data: dict) -> bool:
        """Whether a leader.json or state.json was written by this run's leader."""
        return written_by_run(data, self.slurm.generation, self.run_started)

    def _watch(self, watcher: threading.Thread) -> None:
        watcher.start()
        self.watchers.append(watcher)

    def _stop_requested(self) -> bool:
        # Written after this node started: a request of an earlier run (before a requeue) is not one.
        return _written_since(Path(self.plan.paths.stop_request), self.run_started)

    def _check_home_is_shared(self, nodes: list[str]) -> None:
        """Fail within a minute, not at the join deadline, when the job directory is not
        one all nodes share: the other nodes' logs never appear in it."""
        if time.time() - self.run_started < SHARED_HOME_CHECK_S:
            return
        logs = Path(self.plan.paths.log_dir).parent
        since = self.run_started - RUN_START_SKEW_S
        silent = [n for n in nodes if not _written_since(logs / n / "vllm-hpc.log", since)]
        if silent:
            raise ClusterError(
                f"no sign of {', '.join(silent)} in {self.plan.paths.job_dir} after {SHARED_HOME_CHECK_S:.0f}s:"
                " the job directory is not on a file system the job's nodes share",
                f"set VLLM_HPC_HOME (now {self.settings.home}) to a directory every node mounts",
            )

    def _set_state(self, phase: str, **fields: object) -> None:
        if self.plan.role == "worker":
            return
        try:
            jobfiles.update_state(self.plan.paths.state, phase, **fields)
        except (OSError, VllmHpcError):
            pass

    def _shutdown(self, ray_timeout: float) -> None:
        for watcher in self.watchers:
            watcher.stopping.set()
        # No ray.shutdown() here: with the cluster going down it can wait seconds on the
        # GCS. The CLI ends this process without Ray's exit hooks instead (cli.serve).
        self.supervisor.stop_all(self.plan.deadlines.stop, ray_timeout)
        if self.plan.ray_tmpdir:
            shutil.rmtree(self.plan.ray_tmpdir, ignore_errors=True)
        self.supervisor.restore_signal_handlers()
        self.reporter.say("this node's processes are stopped")

    def _env(self, command_name: str) -> dict[str, str]:
        command = self.plan.command(command_name)
        # vllm-hpc's own variables stay here: vLLM warns about VLLM_* names it does not know.
        base = {k: v for k, v in self.settings.base_env.items() if not k.startswith("VLLM_HPC_")}
        if "RAY_AUTH_TOKEN_PATH" in self.plan.env:
            # Ray prefers RAY_AUTH_TOKEN over the job's token file: an exported one must not win.
            base.pop("RAY_AUTH_TOKEN", None)
        return resolve_env(base, self.plan.env, command.env, read_secret=lambda p: jobfiles.read_secret_file(p, "secret"))

    # -- secrets -------------------------------------------------------------
    def _prepare_api_key(self) -> None:
        mode, paths = self.plan.api_key, self.plan.paths
        if mode == "none":
            return
        if mode == "generated":
            key = jobfiles.new_secret()
        elif mode == "file":
            path = self.options.api_key_file or self.settings.api_key_file or ""
            key = jobfiles.read_secret_file(path, "API key")
        else:
            env = self.settings.base_env
            key = env.get(ENV_API_KEY) or env.get("VLLM_API_KEY") or ""
        jobfiles.write_private(paths.api_key, key + "\n")
        self.api_key = key

    # -- single node and leader -------------------------------------------------
    def _refuse_a_second_server(self) -> None:
        plan = self.plan
        try:
            state = jobfiles.read_json(plan.paths.state) or {}
            endpoint = jobfiles.read_json(plan.paths.endpoint) or {}
        except VllmHpcError:
            return
        answers = bool(endpoint.get("node_ip") and endpoint.get("port")) and tcp_open(endpoint["node_ip"], int(endpoint["port"]))
        window = plan.deadlines.join + plan.deadlines.ready
        step = other_step_serving(state, self.slurm.generation, time.time(), window, answers)
        if step is not None:
            where = f"already serves at {endpoint.get('url')}" if state.get("phase") == "ready" else "is already starting"
            raise LaunchError(
                f"step {step} of job {plan.job_id} {where}, and a job runs one server (its key, endpoint and state)",
                f"stop that step first (scancel {plan.job_id}.{step}), or submit the second model as a job of its own",
            )

    def _run_server(self) -> None:
        plan = self.plan
        self._prepare_api_key()
        self._start_run_state()
        self._watch(StopRequestWatcher(self.supervisor, plan.paths.stop_request, self.run_started))
        if plan.role == "leader":
            self._start_ray_head()
        server = self.supervisor.start(plan.command("server"), self._env("server"))
        base_url = probe_url(plan.host, plan.node_ip, plan.port)
        self.reporter.say(f"loading {plan.model} as '{plan.served_model_name}' (tensor {plan.tensor_parallel_size} x pipeline {plan.pipeline_parallel_size})")
        took = wait_for_ready(self.supervisor, base_url, plan.served_model_name, self.api_key, plan.deadlines.ready)
        self._publish_endpoint(base_url, took)
        if plan.deadlines.liveness_interval > 0:
            self._watch(LivenessWatcher(self.supervisor, base_url, plan.served_model_name, self.api_key, plan.deadlines.liveness_interval))
        del server
        while True:
            self.supervisor.sleep(1.0)

    def _start_ray_head(self) -> None:
        plan = self.plan
        token = jobfiles.new_secret()
        jobfiles.write_private(plan.paths.ray_token, token + "\n")
        # This process talks to Ray as a client too: it needs the same token settings.
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED"):
            os.environ[key] = str(plan.env[key])
        os.environ.pop("RAY_AUTH_TOKEN", None)
        # Importing Ray takes seconds: do it while the head starts.
        importer = threading.Thread(target=importlib.import_module, args=("ray._raylet",), daemon=True)
        importer.start()
        gcs = plan.ports["ray_gcs"]
        # Published before the head is up, so that the workers' `ray start` runs beside
        # the head's (a worker waits for the head's GCS to answer, and is retried).
        jobfiles.write_json(
            plan.paths.leader,
            {"ip": plan.node_ip, "ray_gcs": gcs, "hostname": plan.hostname, "run": self.slurm.generation,
             "published_epoch": time.time(), "job_id": plan.job_id},
        )
        self._fabric_check()
        self.supervisor.start(plan.command("ray-head"), self._env("ray-head"))
        wait_for(
            self.supervisor,
            f"Ray head on {plan.node_ip}:{gcs}",
            lambda: (tcp_open(plan.node_ip, gcs), "port not open yet"),
            RAY_HEAD_UP_TIMEOUT_S,
            ClusterError,
            "see the ray-head log in the job directory",
            interval=0.1,  # a connect to this node's own port: cheap, and the nodes wait on it
        )
        from .raycluster import NodeWatcher, PortWatcher, RayMembers, wait_for_nodes

        importer.join()
        members = RayMembers(f"{plan.node_ip}:{gcs}")
        self.ray_connected = True
        others = [n for n in plan.nodes if n != plan.hostname]
        wait_for_nodes(self.supervisor, members.read, plan.nodes, plan.gpus_per_node, plan.deadlines.join,
                       check=lambda: self._check_home_is_shared(others))
        # Each worker's own port: a node whose block was busy moved to another.
        workers = {n.name: (n.ip, n.port) for n in members.read() if n.alive and n.name != plan.hostname}
        for watcher in (NodeWatcher(self.supervisor, members.read, plan.nodes), PortWatcher(self.supervisor, workers)):
            self._watch(watcher)

    def _publish_endpoint(self, base_url: str, took: float) -> None:
        plan = self.plan
        listens_everywhere = plan.host in ("0.0.0.0", "::")
        endpoint = {
            "job_id": plan.job_id,
            "model": plan.served_model_name,
            "model_path": plan.model,
            "url": f"{base_url}/v1",
            "base_url": base_url,
            "hostname_url": f"http://{self.slurm.host or plan.hostname}:{plan.port}/v1" if listens_everywhere else None,
            "host": plan.host,
            "port": plan.port,
            "node": plan.hostname,
            "node_ip": plan.node_ip,
            "nodes": list(plan.nodes),
            "tensor_parallel_size": plan.tensor_parallel_size,
            "pipeline_parallel_size": plan.pipeline_parallel_size,
            "api_key_file": plan.paths.api_key if plan.api_key != "none" else None,
            "started": jobfiles.now_iso(),
            "seconds_to_ready": round(took, 1),
        }
        # What NCCL chose, from its logs of this run (vLLM set its communicators up while loading).
        logs = Path(plan.paths.log_dir).parent
        fabric = nccl.read_logs(logs, self.run_started - RUN_START_SKEW_S)
        warning = nccl.socket_fallback_warning(fabric, nccl.local_hcas(), str(logs))
        endpoint["fabric"] = {**fabric.as_dict(), "warning": warning}
        jobfiles.write_json(plan.paths.endpoint, endpoint)
        self._set_state("ready", endpoint=plan.paths.endpoint, url=endpoint["url"])
        self.reporter.say(f"READY: {endpoint['url']} serves '{plan.served_model_name}' (endpoint file {plan.paths.endpoint})")
        self.reporter.say("try: " + curl_line(endpoint))
        self.reporter.say(f"fabric: {fabric.summary()}")
        if warning:
            self.reporter.say(f"WARNING: {warning}")


    # -- fabric check ----------------------------------------------------------
    def _fabric_check(self) -> None:
        """--fabric-check: every node takes part in `doctor --fabric` once the leader is
        known, before Ray and vLLM; a node that cannot fails the job, named."""
        plan = self.plan
        command = next((c for c in plan.commands if c.name == "fabric-check"), None)
        if command is None:
            return
        self.reporter.say("fabric check: measuring the links between the nodes before Ray and vLLM start")
        child = self.supervisor.start(command, self._env("fabric-check"))
        self.supervisor.children.remove(child)  # its end is expected; it is awaited here
        try:
            wait_for(self.supervisor, "the fabric check", lambda: (not child.alive(), "measuring"),
                     FABRIC_CHECK_MEET_S + 120, ClusterError, f"see {command.log}")
        finally:
            if child.alive():
                stop_process_tree(child, 5.0, self.reporter)
        lines = child.tail(40).splitlines()
        if child.process.returncode != 0:
            errors = [line.split("error: ", 1)[1] for line in lines if line.startswith("vllm-hpc: error: ")]
            raise ClusterError(f"fabric check on {plan.hostname}: {errors[-1] if errors else 'exit ' + str(child.process.returncode)}",
                               f"see {command.log}; vllm-hpc doctor --fabric under srun repeats the test")
        for line in lines:
            if line.startswith(("fabric:", "  all-reduce", "  pair")):
                self.reporter.say(line.strip())

    # -- worker --------------------------------------------------------------
    def _run_worker(self) -> None:
        plan = self.plan
        leader = self._wait_for_leader()
        self._fabric_check()
        command = plan.command("ray-worker")
        argv = tuple(a.replace(LEADER_ADDRESS_PLACEHOLDER, f"{leader['ip']}:{leader['ray_gcs']}") for a in command.argv)
        live_command = dataclasses.replace(command, argv=argv)
        env = self._env("ray-worker")
        jobfiles.read_secret_file(plan.paths.ray_token, "Ray token")
        start = time.monotonic()
        requested: float | None = None
        while True:
            child = self.supervisor.start(live_command, env)
            try:
                while True:
                    self.supervisor.sleep(1.0)
                    state = self._leader_state()
                    if state == "failed":
                        raise JobFailedError("the leader reported a failure; this worker stops", "see the leader's log")
                    if self._stop_requested():
                        # The leader stops its server first; this node's Ray goes after it.
                        requested = requested or time.monotonic()
                        if state == "stopped" or time.monotonic() - requested > WORKER_STOP_WAIT_S:
                            raise Signalled(signal.SIGUSR1, "a stop request")
                    if state == "stopped":
                        raise Signalled(signal.SIGTERM, "the leader's stop")
            except ChildDiedError:
                ran = time.monotonic() - child.started
                self.supervisor.children.remove(child)
                within_join = time.monotonic() - start < plan.deadlines.join
                if ran < WORKER_JOINED_AFTER_S and within_join and self._leader_state() == "starting":
                    self.reporter.say(f"Ray worker could not join {leader['ip']}:{leader['ray_gcs']} yet; retrying")
                    self.supervisor.sleep(2.0)
                    continue
                raise ChildDiedError(
                    f"the Ray worker on {plan.hostname} ended: the leader's Ray head at {leader['ip']}:{leader['ray_gcs']} went away"
                    f" or refused this node, see {child.log}",
                    "see the leader's log in the job directory",
                ) from None

    def _leader_state(self) -> str | None:
        try:
            data = jobfiles.read_json(self.plan.paths.state) or {}
        except VllmHpcError:
            return None
        return data.get("phase") if self._current(data) else None

    def _wait_for_leader(self) -> dict:
        plan = self.plan
        return wait_for_published(
            self.supervisor,
            plan.paths.leader,
            self.slurm.generation,
            self.run_started,
            f"leader {plan.leader} to publish its fabric address",
            plan.deadlines.join,
            f"check the leader's log; the job directory {plan.paths.job_dir} must be on a file system all nodes share",
            check=lambda: self._check_home_is_shared([plan.leader]),
        )


def curl_line(endpoint: dict) -> str:
    body = (
        '{"model": "%s", "messages": [{"role": "system", "content": "You are a helpful assistant."}, '
        '{"role": "user", "content": "Hello!"}], "temperature": 0, "max_tokens": 32}' % endpoint["model"]
    )
    parts = ["curl", "-s", f"{endpoint['url']}/chat/completions", "-H", "Content-Type: application/json"]
    line = shlex.join(parts)
    if endpoint.get("api_key_file"):
        line += f' -H "Authorization: Bearer $(cat {shlex.quote(endpoint["api_key_file"])})"'
    return line + " -d " + shlex.quote(body)
