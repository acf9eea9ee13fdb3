"""The leader's view of the Ray cluster: wait until every node of the job joined with
its GPUs, then keep watching that none leaves. Ray is imported only here, and only
on the leader of a multi-node job."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from .errors import ChildDiedError, ClusterError, NodeLostError, ResourceError
from .network import tcp_open
from .supervisor import Supervisor, wait_for


@dataclass(frozen=True)
class RayNode:
    name: str
    ip: str
    alive: bool
    gpus: float
    port: int = 0  # the raylet's (node manager's) port


class RayMembers:
    """Ray's node table, read straight from its GCS with Ray's own GCS client: no driver,
    so no core worker, no job registration and no log streaming in this process (a
    driver's ray.init took most of the leader's formation time). The client is Ray's
    internal one (ray._raylet.GcsClient), as Ray's own CLI and dashboard use it; the
    image pins the Ray it is tested with."""

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        from ray._raylet import GcsClient

        self._client = GcsClient(address=address)
        self._timeout = timeout_s

    def read(self) -> list[RayNode]:
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        return [
            RayNode(
                name=str(n.node_name or n.node_manager_hostname or n.node_manager_address),
                ip=str(n.node_manager_address),
                alive=n.state == GcsNodeInfo.ALIVE,
                gpus=float(n.resources_total.get("GPU", 0)),
                port=int(n.node_manager_port),
            )
            for n in self._client.get_all_node_info(timeout=self._timeout).values()
        ]


def membership(nodes: list[RayNode], expected: tuple[str, ...], gpus_per_node: int) -> tuple[bool, str]:
    """Pure: are all expected nodes alive in the cluster with their GPUs? And what is seen.

    A node that joined with another GPU count than the leader's is refused at once:
    tensor parallel = GPUs per node needs the same count everywhere, and Slurm's
    --gpus=N may spread N unevenly (6 + 2).
    """
    alive = {n.name: n for n in nodes if n.alive}
    uneven = [f"{n.name} has {n.gpus:g}" for n in alive.values() if n.name in expected and n.gpus != gpus_per_node]
    if uneven:
        raise ResourceError(
            f"the job's nodes have uneven GPU counts: {', '.join(uneven)}, the leader {gpus_per_node}"
            " (tensor parallel = GPUs per node needs the same count on every node)",
            "submit with --gpus-per-node=N or --gres=gpu:N instead of --gpus=N",
        )
    missing = [name for name in expected if name not in alive]
    gpus = sum(n.gpus for n in alive.values() if n.name in expected)
    seen = f"{len(expected) - len(missing)}/{len(expected)} nodes, {gpus:g} GPUs"
    if missing:
        seen += f"; missing: {', '.join(missing)}"
    return not missing, seen


def wait_for_nodes(supervisor: Supervisor, read: Callable[[], list[RayNode]], expected: tuple[str, ...], gpus_per_node: int,
                   deadline_s: float, check: Callable[[], None] | None = None) -> float:
    """Until every expected node joined; ``check`` may raise to end the wait early."""

    def probe() -> tuple[bool, str]:
        if check is not None:
            check()
        return membership(read(), expected, gpus_per_node)

    return wait_for(
        supervisor,
        f"all {len(expected)} nodes to join the Ray cluster",
        probe,
        deadline_s,
        ClusterError,
        "check the missing nodes' logs in the job directory (their Ray worker could not reach the leader)",
        interval=0.25,
    )


class NodeWatcher(threading.Thread):
    """Fails the job as soon as a node of the job is no longer alive in Ray."""

    def __init__(self, supervisor: Supervisor, read: Callable[[], list[RayNode]], expected: tuple[str, ...], interval: float = 1.0) -> None:
        super().__init__(name="ray-nodes", daemon=True)
        self.supervisor, self.read, self.expected, self.interval = supervisor, read, expected, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                nodes = self.read()
            except Exception as err:  # noqa: BLE001 - any failure to read the GCS is fatal here
                if self.stopping.is_set():
                    return
                self.supervisor.fail(ChildDiedError(f"lost the Ray cluster's control service: {type(err).__name__}: {err}"))
                return
            alive = {n.name for n in nodes if n.alive}
            gone = [name for name in self.expected if name not in alive]
            if gone:
                ips = {n.name: n.ip for n in nodes}
                named = ", ".join(f"{g} ({ips.get(g, '?')})" for g in gone)
                self.supervisor.fail(
                    NodeLostError(
                        tuple(gone),
                        f"node {named} left the Ray cluster: its Ray worker or the whole node died",
                        "see that node's logs in the job directory",
                    )
                )
                return


class PortWatcher(threading.Thread):
    """Probes each worker node's raylet port over TCP: a node that vanished (power,
    kernel, network) is seen in a few seconds even while Ray's own health check waits
    on a connection that will never answer."""

    def __init__(self, supervisor: Supervisor, targets: dict[str, tuple[str, int]], interval: float = 1.0, misses: int = 3) -> None:
        super().__init__(name="node-ports", daemon=True)
        self.supervisor, self.targets, self.interval, self.misses = supervisor, targets, interval, misses
        self.stopping = threading.Event()

    def run(self) -> None:
        missed = dict.fromkeys(self.targets, 0)
        while not self.stopping.wait(self.interval):
            for name, (ip, port) in self.targets.items():
                missed[name] = 0 if tcp_open(ip, port, timeout=self.interval) else missed[name] + 1
                if missed[name] >= self.misses and not self.stopping.is_set():
                    self.supervisor.fail(
                        NodeLostError(
                            (name,),
                            f"node {name} ({ip}) left the Ray cluster: its Ray worker at port {port} stopped answering"
                            f" {self.misses} times in a row (the node or its Ray died)",
                            "see that node's logs in the job directory",
                        )
                    )
                    return
