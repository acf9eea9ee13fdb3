"""A real Slurm cluster emulated on one machine, for tests.

Every emulated host (the controller ``ctl`` and each node) runs in its own network,
PID, UTS, mount and IPC namespaces, so ``hostname`` is the host's name, its process
list is its own and it can be killed as a whole. Each node has two interfaces, each
joined to a bridge in the root namespace:

- ``eth0``, the management address; the node's hostname resolves to it (each host
  sees a private ``/etc/hosts`` listing every host's management address, and
  ``<node>-ib`` names for the fabric addresses);

A node's hostname is not its Slurm name, as on clusters whose slurm.conf sets
``NodeHostname`` (cloud and many vendor clusters): Slurm knows ``gpu01``, whose
``hostname`` says ``host-gpu01`` (:meth:`Layout.hostname`).
- ``ib0``, the fabric address, on a different subnet.

No default route. Each node has a private ``/tmp`` and ``/dev/shm``; paths listed in
``shared`` (the cluster root by default) stay visible at the same path even when they
lie under ``/tmp``. Everything else (the repository, ``$HOME``) is the host's, as a
shared file system would be. GPUs are faked as ``gres/gpu`` backed by character
devices, so ``--gres=gpu:N`` and ``--gpus-per-node=N`` set ``CUDA_VISIBLE_DEVICES``
and ``SLURM_GPUS_ON_NODE``.

The daemons: one ``munged`` (root namespace, private key and socket), one
``slurmctld -D`` and one ``slurmd -D -N <node>`` per node. ``sbatch``, ``srun``,
``squeue``, ``scancel`` and ``scontrol`` work from the root namespace with
``SLURM_CONF`` from :attr:`Cluster.env`. Steps are tracked with proctrack/linuxproc;
inside the nodes ``slurmstepd`` is wrapped (``slurmstepd-subreaper``) so that processes
whose parent died stay in their step's process tree, and ``scancel`` ends them all
(SIGTERM first, SIGKILL after KillWait=30 s, Slurm's default), as cgroup tracking would.

Batch jobs start on slurmctld's 1 s background tick (``batch_sched_delay=0``): the
first job after start waits about 3 s, later ones under 1 s.

Python API::

    with Cluster(Path("/run/vhb/a"), nodes=3, gpus_per_node=4) as c:
        job = c.sbatch(["--nodes=3", "--wrap", "srun hostname"])
        c.wait_job(job, {"COMPLETED"}, timeout=30)
        c.node_names            # ['gpu01', 'gpu02', 'gpu03']
        c.mgmt_ip("gpu02"), c.fabric_ip("gpu02")
        c.node_exec("gpu01", ["ip", "-br", "addr"], capture_output=True, text=True)
        c.node_processes("gpu01")   # [(host pid, cmdline), ...]
        c.kill_node("gpu02")        # SIGKILL the node's namespace init: all of it goes

Keep ``root`` short: Slurm's and Ray's Unix socket paths must stay under 107 bytes.
Job files must be on a path every node sees: outside ``/tmp`` or under ``root``.

Command line (root only)::

    python tests/bed/cluster.py up --root /run/vhb/x --nodes 3 [--gpus-per-node 4]
    python tests/bed/cluster.py exec --root /run/vhb/x gpu01 -- ps -ef
    python tests/bed/cluster.py down --root /run/vhb/x

Addresses: cluster slot ``k`` (0..63, claimed under ``/run/vllm-hpc-bed``) uses
``10.213.<2k>.0/24`` for management and ``10.213.<2k+1>.0/24`` for the fabric; the
root namespace holds ``.1`` on both bridges, the controller ``.2``, node ``i`` ``.<10+i>``.
Interfaces and network namespaces are named ``vhb<k>...``.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SLOT_DIR = Path("/run/vllm-hpc-bed")
MAX_SLOTS = 64
NET_PREFIX = "10.213"
CONTROLLER = "ctl"
SLURMSTEPD = "/usr/sbin/slurmstepd"  # where slurmd runs it from, fixed at build time
STEPD_WRAPPER = Path(__file__).resolve().parent / "slurmstepd-subreaper"
REQUIRED_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo",
                  "unshare", "nsenter", "ip")

# Job states after which a job does not change any more.
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
})


class BedError(RuntimeError):
    """The test bed could not do what was asked."""


def log_to_stderr(message: str) -> None:
    print(f"[bed] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure parts

@dataclass(frozen=True)
class Layout:
    """Names and addresses of one cluster; pure, derived from slot and node count."""

    root: Path
    slot: int
    nodes: int
    gpus_per_node: int
    node_prefix: str = "gpu"

    @property
    def node_names(self) -> list[str]:
        width = max(2, len(str(self.nodes)))
        return [f"{self.node_prefix}{i:0{width}d}" for i in range(1, self.nodes + 1)]

    @property
    def hostlist(self) -> str:
        width = max(2, len(str(self.nodes)))
        if self.nodes == 1:
            return self.node_names[0]
        return f"{self.node_prefix}[{1:0{width}d}-{self.nodes:0{width}d}]"

    @property
    def hosts(self) -> list[str]:
        return [CONTROLLER, *self.node_names]

    @property
    def tag(self) -> str:
        return f"vhb{self.slot}"

    def mgmt_net(self) -> str:
        return f"{NET_PREFIX}.{2 * self.slot}"

    def fabric_net(self) -> str:
        return f"{NET_PREFIX}.{2 * self.slot + 1}"

    def hostname(self, host: str) -> str:
        """What ``hostname`` prints on a host: a node's differs from its Slurm name."""
        return host if host == CONTROLLER else f"host-{host}"

    def host_index(self, host: str) -> int:
        """0 for the controller, 1.. for nodes."""
        return self.hosts.index(host)

    def mgmt_ip(self, host: str) -> str:
        i = self.host_index(host)
        return f"{self.mgmt_net()}.{2 if i == 0 else 10 + i}"

    def fabric_ip(self, host: str) -> str:
        i = self.host_index(host)
        if i == 0:
            raise BedError("the controller has no fabric interface")
        return f"{self.fabric_net()}.{10 + i}"

    def netns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def veth(self, host: str, kind: str) -> str:
        """Root-namespace end of a host's veth pair; kind 'm' (management) or 'f'."""
        i = self.host_index(host)
        return f"{self.tag}{'c' if i == 0 else f'n{i}'}{kind}"

    def bridge(self, kind: str) -> str:
        return f"{self.tag}{kind}"

    # files
    @property
    def conf_dir(self) -> Path:
        return self.root / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.conf_dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "sock"

    def host_dir(self, host: str) -> Path:
        return self.root / host

    def gpu_devices(self) -> list[Path]:
        return [self.root / "dev" / f"nvidia{i}" for i in range(self.gpus_per_node)]


def build_hosts_file(layout: Layout) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{layout.mgmt_ip(h)}\t{' '.join(dict.fromkeys([layout.hostname(h), h]))}" for h in layout.hosts]
    lines += [f"{layout.fabric_ip(n)}\t{n}-ib" for n in layout.node_names]
    return "\n".join(lines) + "\n"


def build_slurm_conf(layout: Layout, cpus_per_node: int, memory_mb: int) -> str:
    r = layout.root
    gres = f" Gres=gpu:{layout.gpus_per_node}" if layout.gpus_per_node else ""
    node_lines = [
        f"NodeName={n} NodeAddr={layout.mgmt_ip(n)} NodeHostname={layout.hostname(n)} CPUs={cpus_per_node} "
        f"Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus_per_node} ThreadsPerCore=1 "
        f"RealMemory={memory_mb}{gres} State=UNKNOWN"
        for n in layout.node_names
    ]
    return "\n".join([
        f"ClusterName={layout.tag}",
        f"SlurmctldHost={CONTROLLER}({layout.mgmt_ip(CONTROLLER)})",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={layout.munge_socket}",
        f"StateSaveLocation={r}/{CONTROLLER}/state",
        f"SlurmctldPidFile={r}/{CONTROLLER}/slurmctld.pid",
        f"SlurmctldLogFile={r}/{CONTROLLER}/slurmctld.log",
        f"SlurmdSpoolDir={r}/%n/spool",
        f"SlurmdPidFile={r}/%n/slurmd.pid",
        f"SlurmdLogFile={r}/%n/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # linuxproc tracks a step's processes by parentage in the node's own /proc
        # (slurmstepd-subreaper keeps orphans in the tree); cgroup tracking would need
        # one cgroup tree per emulated node.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={r}/{CONTROLLER}/jobcomp.txt",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0",
        # the emulated nodes claim more CPUs than the machine has
        "SlurmdParameters=config_overrides",
        "GresTypes=gpu",
        "ReturnToService=2",
        "KillWait=30",
        "SlurmdTimeout=20",
        "InactiveLimit=0",
        "MinJobAge=3600",
        "Waittime=0",
        "TmpFS=/tmp",
        *node_lines,
        f"PartitionName=bed Nodes={layout.hostlist} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def build_gres_conf(layout: Layout) -> str:
    lines = ["AutoDetect=off"]
    if layout.gpus_per_node:
        devices = layout.root / "dev" / (
            f"nvidia[0-{layout.gpus_per_node - 1}]" if layout.gpus_per_node > 1 else "nvidia0")
        lines.append(f"NodeName={layout.hostlist} Name=gpu File={devices}")
    return "\n".join(lines) + "\n"


def build_cgroup_conf() -> str:
    # slurmd 22.05 initialises a cgroup plugin even when no cgroup plugin is used;
    # v1 only reads the mounted hierarchy (the host here is hybrid v1 + v2).
    return "CgroupPlugin=autodetect\nIgnoreSystemd=yes\n"


def build_host_command(layout: Layout, host: str, python: str, script: Path,
                       daemon: Sequence[str], shared: Sequence[Path]) -> list[str]:
    """The command that starts one emulated host: enter its network namespace, make
    fresh PID/UTS/mount/IPC namespaces, run this module's init as PID 1 there."""
    init = [python, str(script), "_init", "--root", str(layout.root), "--hostname", layout.hostname(host),
            "--hosts-file", str(layout.conf_dir / "hosts"),
            "--tmp", str(layout.host_dir(host) / "tmp")]
    for path in shared:
        init += ["--shared", str(path)]
    if host != CONTROLLER:
        init += ["--bind", f"{layout.conf_dir / 'slurmstepd-subreaper'}:{SLURMSTEPD}"]
    return ["nsenter", f"--net=/run/netns/{layout.netns(host)}", "--",
            "unshare", "--pid", "--fork", "--mount-proc", "--uts", "--mount", "--ipc",
            "--propagation", "private", "--kill-child",
            "--", *init, "--", *daemon]


def parse_job_state(scontrol_output: str) -> Optional[str]:
    """JobState from ``scontrol show job -o`` output, or None."""
    m = re.search(r"\bJobState=(\S+)", scontrol_output)
    return m.group(1) if m else None


def parse_jobcomp_state(jobcomp_text: str, job_id: int) -> Optional[str]:
    state = None
    for line in jobcomp_text.splitlines():
        if re.search(rf"\bJobId={job_id}\b", line):
            m = re.search(r"\bJobState=(\S+)", line)
            if m:
                state = m.group(1)
    return state


def parse_node_states(sinfo_output: str) -> dict[str, str]:
    states = {}
    for line in sinfo_output.split("\n"):
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


# --------------------------------------------------------------------------- processes

def _read_proc(pid: int, name: str) -> Optional[bytes]:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    raw = _read_proc(pid, "cmdline") or b""
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    stat = _read_proc(pid, "stat")
    if stat is None:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def _ppid(pid: int) -> Optional[int]:
    stat = _read_proc(pid, "stat")
    if stat is None:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pid_ns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until no pid is alive; return those still alive at the deadline."""
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        for p in pending:
            _reap(p)
        pending = [p for p in pending if _alive(p)]
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.05)


def wait_for(what: str, check: Callable[[], Any], timeout: float,
             log: Callable[[str], None], interval: float = 0.1,
             seen: Callable[[], str] = lambda: "") -> Any:
    """Poll check() until it returns something truthy; bounded, with progress."""
    start = time.monotonic()
    deadline = start + timeout
    next_report = start + 5
    while True:
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now > deadline:
            last = seen()
            raise BedError(f"timed out after {timeout:.0f} s waiting for {what}"
                           + (f"; last seen: {last}" if last else ""))
        if now > next_report:
            last = seen()
            log(f"waiting for {what}: {now - start:.0f} s of {timeout:.0f} s"
                + (f" ({last})" if last else ""))
            next_report = now + 5
        time.sleep(interval)


# --------------------------------------------------------------------------- the cluster

class Cluster:
    """A Slurm cluster of ``nodes`` emulated nodes under ``root`` (see module doc)."""

    def __init__(self, root: Path, nodes: int = 2, gpus_per_node: int = 4, *,
                 # Declared, not real (SlurmdParameters=config_overrides): room for the
                 # sbatch scripts' 4 CPUs and 32 GB per GPU on every fake GPU.
                 cpus_per_node: int = 32, memory_mb: int = 262144,
                 shared: Sequence[Path] = (), node_prefix: str = "gpu",
                 log: Callable[[str], None] = log_to_stderr,
                 start_timeout: float = 60.0) -> None:
        if not 1 <= nodes <= 99:
            raise BedError(f"nodes must be 1..99, got {nodes}")
        if gpus_per_node < 0:
            raise BedError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
        self.root = Path(os.path.abspath(root))
        if len(str(self.root)) > 40:
            raise BedError(f"root {self.root} is too long for Unix socket paths; "
                           "keep it under 40 characters")
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.cpus_per_node = cpus_per_node
        self.memory_mb = memory_mb
        self.node_prefix = node_prefix
        self.shared = [self.root, *(Path(os.path.abspath(p)) for p in shared)]
        self.log = log
        self.start_timeout = start_timeout
        self.layout: Optional[Layout] = None
        self._state: dict[str, Any] = {}
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}

    # ---- public properties
    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm commands run from the root namespace."""
        return {**os.environ, "SLURM_CONF": str(self._layout().slurm_conf)}

    @property
    def node_names(self) -> list[str]:
        return self._layout().node_names

    @property
    def hostlist(self) -> str:
        return self._layout().hostlist

    def mgmt_ip(self, node: str) -> str:
        return self._layout().mgmt_ip(node)

    def fabric_ip(self, node: str) -> str:
        return self._layout().fabric_ip(node)

    def hostname(self, node: str) -> str:
        return self._layout().hostname(node)

    def _layout(self) -> Layout:
        if self.layout is None:
            raise BedError("cluster not started")
        return self.layout

    # ---- context manager
    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- start
    def start(self) -> None:
        """Start munge, the controller and the nodes; wait until all nodes are idle."""
        missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
        if missing:
            raise BedError(f"missing tools {missing}: run tests/bed/install-system.sh")
        if os.geteuid() != 0:
            raise BedError("the test bed needs root (namespaces, bridges, mknod)")
        t0 = time.monotonic()
        # whatever an earlier run of this root left behind goes first
        self.stop()
        try:
            self._start(t0)
        except BaseException as e:
            self.log(f"start failed ({e}); tearing down")
            detail = self._log_tails()
            self.stop()
            if isinstance(e, BedError) and detail:
                raise BedError(f"{e}\n{detail}") from e
            raise

    def _start(self, t0: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        slot = self._claim_slot()
        layout = Layout(self.root, slot, self.nodes, self.gpus_per_node, self.node_prefix)
        self.layout = layout
        self._state.update(nodes=self.nodes, gpus_per_node=self.gpus_per_node,
                           node_prefix=self.node_prefix)
        self._save_state()
        self._write_files(layout)
        self._start_munge(layout)
        self._make_network(layout)
        self.timings["prepare_s"] = time.monotonic() - t0

        self._start_host(CONTROLLER, ["slurmctld", "-D", "-f", str(layout.slurm_conf)])
        wait_for("slurmctld to answer", self._controller_up, self.start_timeout, self.log)
        for node in layout.node_names:
            self._start_host(node, ["slurmd", "-D", "-N", node, "-f", str(layout.slurm_conf)])

        def idle() -> bool:
            failure = self._controller_failure() or self._node_failure()
            if failure:
                raise BedError(failure)
            states = self.node_states()
            return len(states) == self.nodes and all(s == "idle" for s in states.values())

        wait_for(f"{self.nodes} nodes to be idle", idle, self.start_timeout, self.log,
                 seen=lambda: str(self.node_states()))
        self.timings["up_s"] = time.monotonic() - t0
        self.log(f"cluster {layout.tag} up in {self.timings['up_s']:.2f} s: "
                 f"{layout.hostlist}, SLURM_CONF={layout.slurm_conf}")

    def _claim_slot(self) -> int:
        SLOT_DIR.mkdir(parents=True, exist_ok=True)
        with open(SLOT_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = set(os.listdir("/sys/class/net"))
            for slot in range(MAX_SLOTS):
                claim = SLOT_DIR / f"slot{slot}"
                if claim.exists() and not self._claim_is_stale(claim, slot):
                    continue
                if f"vhb{slot}m" in existing or f"vhb{slot}f" in existing:
                    continue
                claim.write_text(str(self.root) + "\n")
                # recorded at once, so that stop() releases the slot whatever fails next
                self._state = {"slot": slot, "hosts": {}}
                self._save_state()
                return slot
        raise BedError(f"all {MAX_SLOTS} cluster slots under {SLOT_DIR} are in use")

    @staticmethod
    def _claim_is_stale(claim: Path, slot: int) -> bool:
        owner = Path(claim.read_text().strip())
        try:
            state = json.loads((owner / "state.json").read_text())
        except (OSError, ValueError):
            return True
        return state.get("slot") != slot

    def _save_state(self) -> None:
        path = self.root / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1))
        tmp.replace(path)

    def _write_files(self, layout: Layout) -> None:
        for sub in (CONTROLLER, "etc", "dev", "munge"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for node in layout.node_names:
            shutil.rmtree(self.root / node, ignore_errors=True)
        self.root.chmod(0o755)
        for host in layout.hosts:
            (layout.host_dir(host) / "tmp").mkdir(parents=True)
            (layout.host_dir(host) / "tmp").chmod(0o1777)
        (self.root / CONTROLLER / "state").mkdir()
        for node in layout.node_names:
            (layout.host_dir(node) / "spool").mkdir()
        layout.conf_dir.mkdir()
        (layout.conf_dir / "hosts").write_text(build_hosts_file(layout))
        layout.slurm_conf.write_text(build_slurm_conf(layout, self.cpus_per_node,
                                                      self.memory_mb))
        (layout.conf_dir / "gres.conf").write_text(build_gres_conf(layout))
        (layout.conf_dir / "cgroup.conf").write_text(build_cgroup_conf())
        # copied so that nodes see them even when the repository is under /tmp
        shutil.copy2(STEPD_WRAPPER, layout.conf_dir / "slurmstepd-subreaper")
        shutil.copy2(os.path.realpath(SLURMSTEPD), layout.conf_dir / "slurmstepd")
        (self.root / "dev").mkdir()
        null = os.stat("/dev/null").st_rdev
        for dev in layout.gpu_devices():
            os.mknod(dev, 0o666 | 0o020000, null)  # S_IFCHR, same device as /dev/null
            dev.chmod(0o666)

    def _start_munge(self, layout: Layout) -> None:
        d = self.root / "munge"
        d.mkdir(mode=0o755)
        d.chmod(0o755)  # munged refuses a socket directory that is not 0755
        key = d / "key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(128))
        argv = ["munged", "-F", "--force", f"--socket={layout.munge_socket}",
                f"--key-file={key}", f"--pid-file={d / 'pid'}", f"--log-file={d / 'log'}",
                f"--seed-file={d / 'seed'}", "--num-threads=4"]
        with open(d / "stdout", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._popen["munged"] = proc
        self._state["munged"] = proc.pid
        self._save_state()
        wait_for("munged socket", lambda: layout.munge_socket.exists()
                 or proc.poll() is not None, 10, self.log)
        if proc.poll() is not None:
            raise BedError(f"munged exited with {proc.returncode}: "
                           + _tail(d / "stdout") + _tail(d / "log"))

    def _make_network(self, layout: Layout) -> None:
        ip = self._ip
        for kind, net in (("m", layout.mgmt_net()), ("f", layout.fabric_net())):
            br = layout.bridge(kind)
            ip("link", "add", br, "type", "bridge", "forward_delay", "0", "stp_state", "0")
            ip("addr", "add", f"{net}.1/24", "dev", br)
            ip("link", "set", br, "up")
        for host in layout.hosts:
            ns = layout.netns(host)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ifaces = [("m", "eth0", layout.mgmt_ip(host))]
            if host != CONTROLLER:
                ifaces.append(("f", "ib0", layout.fabric_ip(host)))
            for kind, name, addr in ifaces:
                outer = layout.veth(host, kind)
                ip("link", "add", outer, "type", "veth", "peer", "name", name, "netns", ns)
                ip("link", "set", outer, "master", layout.bridge(kind), "up")
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", name)
                ip("-n", ns, "link", "set", name, "up")

    @staticmethod
    def _ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise BedError(f"ip {shlex.join(args)} failed: {r.stderr.strip()}")

    def _start_host(self, host: str, daemon: Sequence[str]) -> None:
        layout = self._layout()
        argv = build_host_command(layout, host, sys.executable, Path(__file__).resolve(),
                                  daemon, self.shared)
        with open(layout.host_dir(host) / "init.log", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=self._daemon_env())
        self._popen[host] = proc
        self._state["hosts"][host] = {"unshare": proc.pid}
        self._save_state()

        def init_pid() -> Optional[int]:
            if proc.poll() is not None:
                raise BedError(f"{host} exited at start with {proc.returncode}: "
                               + _tail(layout.host_dir(host) / "init.log"))
            children = [p for p in _all_pids() if _ppid(p) == proc.pid]
            return children[0] if children else None

        pid = wait_for(f"{host} namespace init", init_pid, 10, self.log, interval=0.01)
        self._state["hosts"][host]["init"] = pid
        self._save_state()

    def _daemon_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["SLURM_CONF"] = str(self._layout().slurm_conf)
        env["VLLM_HPC_BED_SLURMSTEPD"] = str(self._layout().conf_dir / "slurmstepd")
        return env

    def _controller_up(self) -> bool:
        failure = self._controller_failure()
        if failure:
            raise BedError(failure)
        r = subprocess.run(["scontrol", "ping"], env=self.env, capture_output=True, text=True)
        return r.returncode == 0 and "UP" in r.stdout

    def _controller_failure(self) -> Optional[str]:
        proc = self._popen.get(CONTROLLER)
        if proc is not None and proc.poll() is not None:
            return (f"slurmctld exited with {proc.returncode}: "
                    + _tail(self._layout().host_dir(CONTROLLER) / "slurmctld.log")
                    + _tail(self._layout().host_dir(CONTROLLER) / "init.log"))
        return None

    def _node_failure(self) -> Optional[str]:
        for node in self._layout().node_names:
            proc = self._popen.get(node)
            if proc is not None and proc.poll() is not None:
                d = self._layout().host_dir(node)
                return (f"slurmd on {node} exited with {proc.returncode}: "
                        + _tail(d / "slurmd.log") + _tail(d / "init.log"))
        return None

    def _log_tails(self) -> str:
        if self.layout is None:
            return ""
        parts = []
        for host in self.layout.hosts:
            d = self.layout.host_dir(host)
            for name in ("init.log", "slurmctld.log", "slurmd.log"):
                if (d / name).exists():
                    parts.append(f"--- {host}/{name}\n{_tail(d / name, 10)}")
        return "\n".join(parts)

    # ---- Slurm
    def slurm(self, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
              timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command from the root namespace."""
        r = subprocess.run(list(argv), env={**self.env, **(env or {})}, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise BedError(f"{shlex.join(argv)} failed with {r.returncode}: "
                           f"{r.stderr.strip() or r.stdout.strip()}")
        return r

    def node_states(self) -> dict[str, str]:
        r = self.slurm(["sinfo", "-N", "-h", "-o", "%N %T"], check=False)
        return parse_node_states(r.stdout) if r.returncode == 0 else {}

    def sbatch(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> int:
        """Submit a batch job (``sbatch --parsable *argv``); return its job id."""
        r = self.slurm(["sbatch", "--parsable", *argv], env=env)
        m = re.match(r"(\d+)", r.stdout.strip())
        if not m:
            raise BedError(f"sbatch printed no job id: {r.stdout!r}")
        return int(m.group(1))

    def job_state(self, job_id: int) -> Optional[str]:
        """The job's state (e.g. RUNNING, COMPLETED), None if Slurm does not know it."""
        r = self.slurm(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if r.returncode == 0:
            state = parse_job_state(r.stdout)
            if state:
                return state
        try:
            text = (self._layout().root / CONTROLLER / "jobcomp.txt").read_text()
        except OSError:
            return None
        return parse_jobcomp_state(text, job_id)

    def wait_job(self, job_id: int, states: Iterable[str], timeout: float) -> str:
        """Wait until the job reaches one of ``states``; a final state outside them fails."""
        wanted = set(states)
        last: list[Optional[str]] = [None]

        def reached() -> Optional[str]:
            state = self.job_state(job_id)
            last[0] = state
            if state in wanted:
                return state
            if state in FINAL_STATES:
                raise BedError(f"job {job_id} ended {state}, waited for {sorted(wanted)}")
            return None

        return str(wait_for(f"job {job_id} to be {'/'.join(sorted(wanted))}", reached,
                            timeout, self.log, interval=0.1, seen=lambda: str(last[0])))

    # ---- nodes
    def init_pid(self, host: str) -> int:
        """Host pid of the node's namespace init (PID 1 inside the node)."""
        try:
            return int(self._state["hosts"][host]["init"])
        except KeyError:
            raise BedError(f"no such host {host!r}") from None

    def node_command(self, node: str, argv: Sequence[str],
                     cwd: Optional[str] = None) -> list[str]:
        """argv wrapped to run inside the node's namespaces (for Popen)."""
        return ["nsenter", "-t", str(self.init_pid(node)), "--net", "--pid", "--mount",
                "--uts", "--ipc", f"--wd={cwd or os.getcwd()}", "--", *argv]

    def node_exec(self, node: str, argv: Sequence[str], *, cwd: Optional[str] = None,
                  **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(argv) inside the node's namespaces; kwargs go to run()."""
        kwargs.setdefault("env", self.env)
        return subprocess.run(self.node_command(node, argv, cwd), **kwargs)

    def node_processes(self, node: str) -> list[tuple[int, str]]:
        """(host pid, command line) of every process in the node's PID namespace."""
        ns = _pid_ns(self.init_pid(node))
        if ns is None:
            return []
        return [(p, " ".join(_cmdline(p))) for p in _all_pids()
                if _pid_ns(p) == ns and _alive(p)]

    def kill_node(self, node: str, timeout: float = 10) -> None:
        """SIGKILL the node's namespace init: every process of the node ends."""
        pid = self.init_pid(node)
        ns = _pid_ns(pid)
        _kill(pid, signal.SIGKILL)

        def gone() -> bool:
            return ns is None or not any(_pid_ns(p) == ns and _alive(p) for p in _all_pids())

        wait_for(f"every process of {node} to end", gone, timeout, self.log, interval=0.05)
        unshare = self._state["hosts"][node].get("unshare")
        if unshare:
            _wait_gone([unshare], timeout)

    # ---- stop
    def stop(self) -> None:
        """Stop everything this root started; safe to call any time, also after a
        failed start or from another process (state is read from root/state.json)."""
        t0 = time.monotonic()
        state = self._state or self._read_state()
        if not state:
            return
        slot = state.get("slot")
        hosts = state.get("hosts", {})
        # 1. every host's namespace: SIGKILL its init, the kernel ends the rest
        victims = []
        for host, pids in hosts.items():
            for key in ("init", "unshare"):
                pid = pids.get(key)
                if pid and self._is_ours(pid):
                    victims.append(pid)
        victims += [p for p in _all_pids() if p not in victims and self._is_ours(p)
                    and os.path.basename(_cmdline(p)[0]) in ("unshare", "nsenter")]
        for pid in victims:
            _kill(pid, signal.SIGKILL)
        left = _wait_gone(victims, 15)
        # 2. munged
        munged = state.get("munged")
        if munged and self._is_ours(munged):
            _kill(munged, signal.SIGTERM)
            if _wait_gone([munged], 5):
                _kill(munged, signal.SIGKILL)
                left += _wait_gone([munged], 5)
        for proc in self._popen.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        # 3. network namespaces, veths and bridges
        if slot is not None:
            tag = f"vhb{slot}"
            r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            for line in r.stdout.splitlines():
                name = line.split()[0] if line.split() else ""
                if name.startswith(f"{tag}-"):
                    subprocess.run(["ip", "netns", "del", name], capture_output=True)
            for name in sorted(os.listdir("/sys/class/net")):
                if re.fullmatch(rf"{tag}[a-z]\w*", name):
                    subprocess.run(["ip", "link", "del", name], capture_output=True)
            claim = SLOT_DIR / f"slot{slot}"
            try:
                if Path(claim.read_text().strip()) == self.root:
                    claim.unlink()
            except OSError:
                pass
        try:
            (self.root / "state.json").unlink()
        except OSError:
            pass
        self._state = {}
        self._popen = {}
        self.timings["down_s"] = time.monotonic() - t0
        if left:
            raise BedError(f"processes {left} did not end")
        self.log(f"cluster under {self.root} stopped in {self.timings['down_s']:.2f} s")

    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        if "nodes" in state:
            self.layout = Layout(self.root, state["slot"], state["nodes"],
                                 state["gpus_per_node"], state.get("node_prefix", "gpu"))
        return state

    @classmethod
    def attach(cls, root: Path, **kwargs: Any) -> "Cluster":
        """A Cluster for one already started under root (by another process)."""
        c = cls(root, **kwargs)
        c._state = c._read_state()
        if not c._state:
            raise BedError(f"no cluster is running under {root}")
        c.nodes = c._state["nodes"]
        c.gpus_per_node = c._state["gpus_per_node"]
        return c

    def _is_ours(self, pid: int) -> bool:
        """pid is a process this root started (guards against pid reuse)."""
        mention = re.compile(rf"(^|=){re.escape(str(self.root))}(/|$)")
        return any(mention.search(a) for a in _cmdline(pid))


def find_leftovers(root: Path, slot: int) -> list[str]:
    """What a cluster of this root and slot left behind: processes, network namespaces,
    interfaces, mounts, slot claim. Empty after a clean stop()."""
    root = Path(os.path.abspath(root))
    tag = f"vhb{slot}"
    found = []
    mention = re.compile(rf"(^|=){re.escape(str(root))}(/|$)")
    for pid in _all_pids():
        argv = _cmdline(pid)
        if pid != os.getpid() and any(mention.search(a) for a in argv):
            found.append(f"process {pid}: {shlex.join(argv)}")
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    found += [f"netns {line.split()[0]}" for line in r.stdout.splitlines()
              if line.startswith(f"{tag}-")]
    found += [f"link {name}" for name in os.listdir("/sys/class/net")
              if re.fullmatch(rf"{tag}[a-z]\w*", name)]
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f
                  if line.split()[4].startswith(str(root) + "/")
                  or f"/run/netns/{tag}-" in line.split()[4]]
    claim = SLOT_DIR / f"slot{slot}"
    if claim.exists() and claim.read_text().strip() == str(root):
        found.append(f"slot claim {claim}")
    return found


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:]) + "\n"


# --------------------------------------------------------------------------- namespace init

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC = 2, 4, 8, 4096, 16384


def _mount(source: str, target: str, fstype: Optional[str] = None, flags: int = 0,
           data: Optional[str] = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(),
                  fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                  data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def run_init(hostname: str, hosts_file: str, tmp: str, shared: Sequence[str],
             binds: Sequence[str], daemon: Sequence[str]) -> int:
    """PID 1 of an emulated host: set up its view of the machine, run the daemon,
    reap orphans, and end (taking the whole namespace with it) when the daemon ends."""
    import socket
    socket.sethostname(hostname)
    # Keep handles on what the new mounts will hide, to mount them back from there.
    cgroup_fd = os.open("/sys/fs/cgroup", os.O_PATH | os.O_DIRECTORY)
    hidden = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in shared if _under(p, "/tmp")]
    # A sysfs of the node's own network namespace (/sys/class/net shows eth0, ib0),
    # with the host's cgroup tree under it, which slurmd needs.
    _mount("sysfs", "/sys", "sysfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount(f"/proc/self/fd/{cgroup_fd}", "/sys/fs/cgroup", None, _MS_BIND | _MS_REC)
    _mount(hosts_file, "/etc/hosts", None, _MS_BIND)
    for bind in binds:
        source, target = bind.split(":", 1)
        _mount(source, target, None, _MS_BIND)
    _mount("shm", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
    _mount(tmp, "/tmp", None, _MS_BIND)
    for path, fd in hidden:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)
    os.close(cgroup_fd)
    os.chdir("/")

    child = subprocess.Popen(list(daemon))

    def forward(signum: int, _frame: Any) -> None:
        _kill(child.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            print(f"init: {shlex.join(daemon)} exited with {code}", flush=True)
            return code if code >= 0 else 128 - code


# --------------------------------------------------------------------------- command line

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and leave it running")
    up.add_argument("--root", type=Path, required=True)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--gpus-per-node", type=int, default=4)
    up.add_argument("--shared", type=Path, action="append", default=[])
    down = sub.add_parser("down", help="stop the cluster under root")
    down.add_argument("--root", type=Path, required=True)
    ex = sub.add_parser("exec", help="run a command inside a node")
    ex.add_argument("--root", type=Path, required=True)
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    init = sub.add_parser("_init", help=argparse.SUPPRESS)
    init.add_argument("--root", required=True)
    init.add_argument("--hostname", required=True)
    init.add_argument("--hosts-file", required=True)
    init.add_argument("--tmp", required=True)
    init.add_argument("--shared", action="append", default=[])
    init.add_argument("--bind", action="append", default=[], metavar="SOURCE:TARGET")
    init.add_argument("daemon", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.command == "_init":
            daemon = args.daemon[1:] if args.daemon[:1] == ["--"] else args.daemon
            return run_init(args.hostname, args.hosts_file, args.tmp, args.shared, args.bind,
                            daemon)
        if args.command == "up":
            c = Cluster(args.root, args.nodes, args.gpus_per_node, shared=args.shared)
            c.start()
            layout = c._layout()
            for node in c.node_names:
                print(f"{node}\tmgmt {c.mgmt_ip(node)}\tib0 {c.fabric_ip(node)}")
            print(f"export SLURM_CONF={layout.slurm_conf}")
            return 0
        if args.command == "down":
            try:
                Cluster.attach(args.root).stop()
            except BedError as e:
                if "no cluster" not in str(e):
                    raise
                print(str(e), file=sys.stderr)
            return 0
        if args.command == "exec":
            c = Cluster.attach(args.root)
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return c.node_exec(args.node, cmd or ["bash"]).returncode
    except BedError as e:
        print(f"cluster.py: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
