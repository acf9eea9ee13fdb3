"""`vllm-hpc doctor --fabric`: measure the fabric between the job's nodes before minutes
of weight loading.

Run under srun, one task per node (the same step shape as `serve`). The nodes meet at
the leader's fabric address (a TCP store on port block + FABRIC_PORT_OFFSET), so a
node that cannot reach it is named; then an all-reduce over every node with
torch.distributed (NCCL on GPU 0 of each node, Gloo over the fabric interface where
there are no GPUs) gives bus bandwidth for a few message sizes, and a ping-pong
between the leader and each other node gives each pair's bandwidth, so that a slow
link is named too. Planning and the figures' arithmetic are pure; ``run`` does the
communication.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import ClusterError

# Inside the job's port block: 0-11 are the server's and Ray's, 20-99 Ray's workers'.
FABRIC_PORT_OFFSET = 12
SIZES = (1 << 20, 16 << 20, 64 << 20)
PAIR_SIZE = 16 << 20
ITERATIONS = 5
# A pair below this share of the pairs' median bandwidth is named as slow.
SLOW_PAIR_SHARE = 0.5


@dataclass(frozen=True)
class FabricPlan:
    rank: int
    nodes: tuple[str, ...]
    leader_ip: str
    port: int
    interface: str
    ip: str
    backend: str  # "nccl" or "gloo"
    meet_timeout_s: float

    @property
    def world(self) -> int:
        return len(self.nodes)


def plan_fabric(rank: int, nodes: tuple[str, ...], leader_ip: str, block: int, interface: str, ip: str, cuda_gpus: int,
                meet_timeout_s: float = 60.0) -> FabricPlan:
    """``cuda_gpus``: GPUs Slurm gave this node that CUDA can use (0: Gloo on the CPU)."""
    return FabricPlan(rank, nodes, leader_ip, block + FABRIC_PORT_OFFSET, interface, ip, "nccl" if cuda_gpus > 0 else "gloo",
                      meet_timeout_s)


def bus_bandwidth_gbs(size: int, seconds: float, world: int) -> float:
    """All-reduce bus bandwidth in GB/s, as nccl-tests reports it: algbw x 2(n-1)/n."""
    if seconds <= 0 or world < 2:
        return 0.0
    return size / seconds / 1e9 * 2 * (world - 1) / world


def slow_pairs(pairs: dict[str, float]) -> list[str]:
    """The pairs whose bandwidth is below SLOW_PAIR_SHARE of the pairs' median."""
    if len(pairs) < 2:
        return []
    median = statistics.median(pairs.values())
    return [pair for pair, gbs in pairs.items() if gbs < SLOW_PAIR_SHARE * median]


def render(result: dict[str, Any]) -> str:
    lines = [f"fabric: {result['backend']} over {result['interface']} across {len(result['nodes'])} nodes ({', '.join(result['nodes'])})"]
    for row in result["allreduce"]:
        lines.append(f"  all-reduce {row['bytes'] >> 20:>4} MiB  {row['ms']:9.2f} ms  bus bandwidth {row['bus_gbs']:7.3f} GB/s")
    for pair, gbs in result["pairs"].items():
        mark = "  SLOW" if pair in result["slow_pairs"] else ""
        lines.append(f"  pair {pair:<24} {gbs:7.3f} GB/s{mark}")
    return "\n".join(lines)


def _meet(plan: FabricPlan):  # noqa: ANN202 - a torch TCPStore
    """Every node at the leader's address; the leader names the nodes that never came."""
    from torch.distributed import TCPStore

    leader = plan.rank == 0
    try:
        store = TCPStore(plan.leader_ip, plan.port, plan.world, is_master=leader, wait_for_workers=False,
                         timeout=timedelta(seconds=plan.meet_timeout_s))
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for an unreachable store
        raise ClusterError(
            f"{plan.nodes[plan.rank]} cannot reach the leader {plan.nodes[0]} at {plan.leader_ip}:{plan.port}"
            f" over {plan.interface} ({type(err).__name__})",
            f"check {plan.interface} on both nodes (ip link, ibstat) and that the port is not filtered",
        ) from None
    store.set(f"node/{plan.rank}", plan.nodes[plan.rank])
    if leader:
        deadline = time.monotonic() + plan.meet_timeout_s
        keys = [f"node/{r}" for r in range(plan.world)]
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = [plan.nodes[r] for r in range(plan.world) if not store.check([f"node/{r}"])]
        store.set("verdict", "missing " + " ".join(missing) if missing else "go")
        if missing:
            raise ClusterError(
                f"{', '.join(missing)} did not reach the leader's fabric address {plan.leader_ip}:{plan.port}"
                f" over {plan.interface} within {plan.meet_timeout_s:.0f}s",
                "check that node's fabric link (ip link, ibstat) and its vllm-hpc output",
            )
    else:
        store.set_timeout(timedelta(seconds=plan.meet_timeout_s + 30))  # the leader waits up to meet_timeout_s
        verdict = store.get("verdict").decode()
        if verdict != "go":
            raise ClusterError(f"the fabric test stopped: {verdict.replace('missing', 'the leader misses')}",
                               "see the leader's output")
    return store


def run(plan: FabricPlan) -> dict[str, Any] | None:
    """Take part in the fabric test; the leader returns the figures, others None."""
    import torch

    os.environ.setdefault("GLOO_SOCKET_IFNAME", plan.interface)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", plan.interface)
    store = _meet(plan)
    device = torch.device("cuda", 0) if plan.backend == "nccl" else torch.device("cpu")
    # Gloo and NCCL print progress on standard output: to stderr with it, so that the
    # leader's table (or --json) is all that standard output holds.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return _measure(plan, store, device)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _measure(plan: FabricPlan, store, device) -> dict[str, Any] | None:  # noqa: ANN001 - torch objects
    import torch
    import torch.distributed as dist

    dist.init_process_group(plan.backend, store=dist.PrefixStore("fabric", store), rank=plan.rank, world_size=plan.world,
                            timeout=timedelta(seconds=120))
    try:
        rows = []
        for size in SIZES:
            tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
            dist.all_reduce(tensor)  # warm-up: connections are made here
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(ITERATIONS):
                dist.all_reduce(tensor)
            _sync(device)
            seconds = (time.perf_counter() - t0) / ITERATIONS
            rows.append({"bytes": size, "ms": round(seconds * 1e3, 3), "bus_gbs": round(bus_bandwidth_gbs(size, seconds, plan.world), 3)})
        pairs = {}
        tensor = torch.ones(PAIR_SIZE // 4, dtype=torch.float32, device=device)
        for other in range(1, plan.world):
            seconds = _ping_pong(dist, tensor, plan.rank, other, device)
            if plan.rank == 0:
                pairs[f"{plan.nodes[0]}<->{plan.nodes[other]}"] = round(2 * PAIR_SIZE / seconds / 1e9, 3)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if plan.rank != 0:
        return None
    return {"backend": plan.backend, "interface": plan.interface, "nodes": list(plan.nodes), "allreduce": rows,
            "pairs": pairs, "slow_pairs": slow_pairs(pairs)}


def _ping_pong(dist, tensor, rank: int, other: int, device) -> float:  # noqa: ANN001 - torch modules and objects
    """Seconds for the leader to send ``tensor`` to ``other`` and get it back (others wait)."""
    t0 = time.perf_counter()
    if rank == 0:
        dist.send(tensor, other)
        dist.recv(tensor, other)
    elif rank == other:
        dist.recv(tensor, 0)
        dist.send(tensor, 0)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device) -> None:  # noqa: ANN001 - a torch.device
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
