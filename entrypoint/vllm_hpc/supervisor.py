"""Starting, watching and stopping this node's processes: the one place with effects
on processes and signals.

Each child runs in its own process group and session, with the parent-death signal
set, so that a stop reaches everything it started and nothing outlives vllm-hpc.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, TextIO

from .errors import ChildDiedError, Signalled, VllmHpcError
from .jobfiles import make_private_dir
from .plan import Command, Secret

PR_SET_PDEATHSIG = 1
RAY_STOP_TIMEOUT_S = 5.0
# After a node's loss Ray's head waits on the lost node for seconds: the job is ending
# anyway, and the other nodes stay allocated until it ends.
RAY_STOP_AFTER_NODE_LOSS_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def resolve_env(base: Mapping[str, str], *layers: Mapping[str, str | Secret], read_secret: Callable[[str], str]) -> dict[str, str]:
    env = dict(base)
    for layer in layers:
        for key, value in layer.items():
            env[key] = read_secret(value.path) if isinstance(value, Secret) else value
    return env


def start_from_proc(chain: list[tuple[str, int]], uptime_s: float, now: float, ticks_per_s: int) -> float:
    """When Slurm started this node's task, as epoch seconds. `chain` is this process and
    its ancestors, nearest first, as (name, start in clock ticks since boot); the task is
    the oldest one below slurmstepd (apptainer, then this Python), or this process when
    there is no slurmstepd above. Counted from /proc/uptime, to 10 ms: psutil's
    create_time adds a boot time rounded to whole seconds (up to 1 s off)."""
    names = [name for name, _ in chain]
    below = names.index("slurmstepd", 1) - 1 if "slurmstepd" in names[1:] else 0
    return now - uptime_s + chain[below][1] / ticks_per_s


def _proc_chain() -> list[tuple[str, int]]:
    chain, pid = [], os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
        # "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        chain.append((name, int(fields[19])))
        pid = int(fields[1])
    return chain


def _task_start() -> float:
    try:
        with open("/proc/uptime", encoding="utf-8") as handle:
            uptime = float(handle.read().split()[0])
        now = time.time()
        return start_from_proc(_proc_chain(), uptime, now, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # no /proc: count from now
        return time.time()


class Reporter:
    """Progress and status lines: to stderr (the Slurm output) and the node's log."""

    def __init__(self, stream: TextIO, prefix: str, log_path: str | None = None) -> None:
        self.stream = stream
        self.prefix = prefix
        self.log_path = log_path
        # "+N.Ns" counts from Slurm starting this node's task, so the nodes' lines form
        # one timeline of the job's start-up.
        self.started = _task_start()

    def say(self, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        line = f"[vllm-hpc {self.prefix} {stamp} +{now - self.started:.1f}s] {message}"
        print(line, file=self.stream, flush=True)
        if self.log_path:
            try:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            except OSError:
                pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: str
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            with open(self.log, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    """Owns the children of this node, the stop signals and the failure flag."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.children: list[Child] = []
        self.wake = threading.Event()
        self.signal_received: int | None = None
        self.failure: VllmHpcError | None = None
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}

    # -- signals -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Also called again after a library (Ray's core worker) installed its own."""
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signal_received is None:
            self.signal_received = signum
        self.wake.set()

    def fail(self, error: VllmHpcError) -> None:
        """Called from watcher threads: the main loop raises it at its next check."""
        with self._lock:
            if self.failure is None:
                self.failure = error
        self.wake.set()

    # -- children ------------------------------------------------------------
    def start(self, command: Command, env: dict[str, str]) -> Child:
        make_private_dir(os.path.dirname(command.log))
        fd = os.open(command.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                list(command.argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )
        except OSError as err:
            raise ChildDiedError(f"cannot start {command.name} ({command.argv[0]}): {err.strerror}", "check the installation") from None
        finally:
            os.close(fd)
        child = Child(command.name, process, command.log)
        self.children.append(child)
        self.reporter.say(f"started {command.name} (pid {process.pid}), log {command.log}")
        return child

    def check(self) -> None:
        """Raise if a stop signal came, a watcher failed, or a child died."""
        if self.signal_received is not None:
            name = signal.Signals(self.signal_received).name
            raise Signalled(self.signal_received, name)
        if self.failure is not None:
            raise self.failure
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
                tail = child.tail()
                detail = f"; last log lines:\n{tail}" if tail else ""
                raise ChildDiedError(f"{child.name} on this node ended ({how}), see {child.log}{detail}")

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early for signals and failures; then check()."""
        self.wake.wait(max(0.0, seconds))
        self.wake.clear()
        self.check()

    def stop_all(self, timeout: float, ray_timeout: float = RAY_STOP_TIMEOUT_S) -> None:
        """Stop children newest first (the server before Ray), each within ``timeout``.

        Ray holds no state worth a long wait, and its stop can stall for half a minute
        on GCS time-outs when a node is gone: it gets at most ``ray_timeout``.
        """
        for child in reversed(self.children):
            limit = min(timeout, ray_timeout) if child.name.startswith("ray-") else timeout
            stop_process_tree(child, limit, self.reporter)
        self.children.clear()


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - the process may be gone already
        return []


def _running(proc) -> bool:  # noqa: ANN001 - a psutil.Process
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_tree(child: Child, timeout: float, reporter: Reporter) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL the group and any descendant."""
    import psutil

    pid = child.process.pid
    descendants = _descendants(pid)
    if child.alive():
        reporter.say(f"stopping {child.name} (pid {pid}, up to {timeout:.0f}s)")
    _killpg(pid, signal.SIGTERM)
    for proc in descendants:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        descendants = [p for p in descendants if _running(p)]
        if child.process.poll() is not None and not descendants:
            break
        descendants += [d for d in _descendants(pid) if d not in descendants]
        time.sleep(0.1)
    else:
        reporter.say(f"{child.name} did not stop within {timeout:.0f}s: killing it")
    _killpg(pid, signal.SIGKILL)
    for proc in descendants + _descendants(pid):
        try:
            proc.kill()
        except psutil.Error:
            pass
    try:
        child.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def wait_for(
    supervisor: Supervisor,
    what: str,
    probe: Callable[[], tuple[bool, str]],
    deadline_s: float,
    error: type[VllmHpcError],
    fix: str,
    interval: float = 0.5,
    report_every: float = 10.0,
) -> float:
    """Poll ``probe`` (returns done, what was seen) until done; bounded, with progress.

    Returns the seconds it took.
    """
    start = time.monotonic()
    last_report = start
    seen = "nothing yet"
    while True:
        supervisor.check()
        done, seen = probe()
        elapsed = time.monotonic() - start
        if done:
            supervisor.reporter.say(f"{what}: done after {elapsed:.1f}s ({seen})")
            return elapsed
        if elapsed >= deadline_s:
            raise error(f"{what} not done after {deadline_s:.0f}s (last seen: {seen})", fix)
        if time.monotonic() - last_report >= report_every:
            supervisor.reporter.say(f"waiting for {what}: {seen} ({elapsed:.0f}s of {deadline_s:.0f}s)")
            last_report = time.monotonic()
        supervisor.sleep(interval)


def stderr_reporter(prefix: str, log_path: str | None = None) -> Reporter:
    return Reporter(sys.stderr, prefix, log_path)
