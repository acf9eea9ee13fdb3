"""The exception hierarchy and the one table of exit codes.

Only the CLI turns these into a one-line message and an exit code; everything else
raises. Each error carries the problem and, where there is one, the fix.
"""

from __future__ import annotations

# Exit codes, documented in the README. Keep this table and the README in step.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: an exception nobody expected
EXIT_USAGE = 2  # the command line itself is wrong (click uses 2 as well)
EXIT_CONFIG = 3  # bad input: model path, environment value, node list, secret file
EXIT_RESOURCES = 4  # GPUs and parallel sizes do not fit the allocation
EXIT_NETWORK = 5  # no usable interface, port in use, address not on this node
EXIT_CLUSTER = 6  # leader unreachable or nodes missing from the Ray cluster by the deadline
EXIT_CHILD_DIED = 7  # vLLM, Ray or a whole node died while starting or serving
EXIT_NOT_READY = 8  # the server did not answer a completion by the deadline
EXIT_UNHEALTHY = 9  # the liveness check found a server that stopped generating
EXIT_NO_JOB = 10  # status/wait/chat found no such job or no endpoint yet
EXIT_JOB_FAILED = 11  # wait/status: the job failed or ended before it was ready
EXIT_DOCTOR = 12  # doctor found a problem on this node
EXIT_LAUNCH = 13  # not one task per node of a step: several tasks, outside srun, a host not in the job
EXIT_SIGNALLED_BASE = 128  # stopped by a signal: 128 + signal number (SIGTERM: 143)


class VllmHpcError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = EXIT_INTERNAL

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = self.problem
        if self.fix:
            text = f"{text}; {self.fix}"
        return " ".join(text.split())


class UsageError(VllmHpcError):
    exit_code = EXIT_USAGE


class ConfigError(VllmHpcError):
    exit_code = EXIT_CONFIG


class ResourceError(VllmHpcError):
    exit_code = EXIT_RESOURCES


class NetworkError(VllmHpcError):
    exit_code = EXIT_NETWORK


class LaunchError(VllmHpcError):
    exit_code = EXIT_LAUNCH


class ClusterError(VllmHpcError):
    exit_code = EXIT_CLUSTER


class ChildDiedError(VllmHpcError):
    exit_code = EXIT_CHILD_DIED


class NodeLostError(ChildDiedError):
    """Nodes of the job are gone (their Ray stopped answering): Slurm learns of it only
    at its SlurmdTimeout, so the sbatch script ends the job itself."""

    def __init__(self, nodes: tuple[str, ...], problem: str, fix: str | None = None) -> None:
        super().__init__(problem, fix)
        self.nodes = nodes


class NotReadyError(VllmHpcError):
    exit_code = EXIT_NOT_READY


class UnhealthyError(VllmHpcError):
    exit_code = EXIT_UNHEALTHY


class NoJobError(VllmHpcError):
    exit_code = EXIT_NO_JOB


class JobFailedError(VllmHpcError):
    exit_code = EXIT_JOB_FAILED


class Signalled(VllmHpcError):
    """Not a failure of ours: the job was told to stop."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"stopped by {name}")
        self.signum = signum
        self.exit_code = EXIT_SIGNALLED_BASE + signum
