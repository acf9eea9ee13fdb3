"""What NCCL really chose, read from its own debug log.

vllm-hpc asks NCCL for its init and network lines (``NCCL_DEBUG=INFO``,
``NCCL_DEBUG_SUBSYS=INIT,NET``) in one file per process under the node's log directory
(``NCCL_DEBUG_FILE``); a user's own ``NCCL_DEBUG*`` values win. Once the server is
ready the leader reads every node's files and says which transport carries traffic
between nodes (``NET/IB`` with its HCAs, or ``NET/Socket`` over an interface) and
within a node. The lines it reads, as NCCL prints them::

    NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>
    NCCL INFO NET/Socket : Using [0]ib0:10.0.0.1<0>
    NCCL INFO Using network IB
    NCCL INFO comm 0x... rank 0 nRanks 8 nNodes 2 localRanks 4 localRank 0 MNNVL 0
    NCCL INFO Channel 00/0 : 3[3] -> 4[0] [send] via NET/IB/0/GDRDMA
    NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read

Parsing is pure; only :func:`read_logs` touches files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The variables vllm-hpc sets for NCCL unless the user set them; %h and %p are NCCL's
# own placeholders for the host name and process id.
LOG_PATTERN = "nccl.%h.%p.log"
LOG_GLOB = "nccl.*.log"

_USING_NET = re.compile(r"NCCL INFO NET/(IB|Socket) : Using (.*?)(?:;|$)")
_DEVICE = re.compile(r"\[\d+\]([^\s\[\];]+)")
_NETWORK = re.compile(r"NCCL INFO Using network (\S+)")
_NODES = re.compile(r"NCCL INFO comm \S+ rank \d+ nRanks (\d+) nNodes (\d+)")
_CHANNEL = re.compile(r"NCCL INFO Channel \S+ : .*? via (\S+)")
_VERSION = re.compile(r"NCCL version (\S+)")
_WARN = re.compile(r"NCCL WARN (.*)")


@dataclass(frozen=True)
class Fabric:
    """What NCCL's logs say, across every process that wrote one."""

    version: str | None = None
    network: str | None = None  # "IB" or "Socket": the network plugin NCCL chose
    devices: tuple[str, ...] = ()  # HCAs ("mlx5_0:1/IB") or socket interfaces ("ib0:10.0.0.1")
    between_nodes: tuple[str, ...] = ()  # "NET/IB", "NET/IB+GDRDMA", "NET/Socket"
    within_node: tuple[str, ...] = ()  # "P2P/CUMEM", "P2P/IPC", "SHM", ...
    nodes: int = 0  # the most nodes one communicator spanned
    ranks: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def seen(self) -> bool:
        return bool(self.version or self.network or self.between_nodes or self.within_node)

    @property
    def sockets_between_nodes(self) -> bool:
        if self.between_nodes:
            return all(t == "NET/Socket" for t in self.between_nodes)
        return self.nodes > 1 and self.network == "Socket"

    def summary(self) -> str:
        if not self.seen:
            return "no NCCL log (no GPU communication yet, or NCCL_DEBUG set otherwise)"
        parts = []
        devices = ", ".join(d.split("<")[0] for d in self.devices) or "?"
        if self.between_nodes:
            parts.append(f"between nodes {', '.join(self.between_nodes)} ({devices})")
        elif self.nodes > 1 and self.network:
            parts.append(f"between nodes NET/{self.network} ({devices})")
        if self.within_node:
            parts.append(f"within a node {', '.join(self.within_node)}")
        if not parts:
            parts.append(f"one node, network {self.network or '?'} unused")
        version = f"NCCL {self.version}: " if self.version else ""
        return version + "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "network": self.network,
            "devices": list(self.devices),
            "between_nodes": list(self.between_nodes),
            "within_node": list(self.within_node),
            "nodes": self.nodes,
            "ranks": self.ranks,
            "summary": self.summary(),
        }


def _transport(via: str) -> tuple[bool, str]:
    """(between nodes, name) of a channel's 'via' field, e.g. NET/IB/0/GDRDMA."""
    parts = via.split("/")
    if parts[0] == "NET":
        name = "/".join(parts[:2])
        return True, name + ("+GDRDMA" if via.endswith("GDRDMA") else "")
    if parts[0] == "P2P" and len(parts) > 1:
        return False, "/".join(parts[:2])
    return False, parts[0]


def parse(lines: Iterable[str]) -> Fabric:
    version = network = None
    devices: list[str] = []
    between: list[str] = []
    within: list[str] = []
    warnings: list[str] = []
    nodes = ranks = 0

    def add(seq: list[str], item: str) -> None:
        if item not in seq:
            seq.append(item)

    for line in lines:
        if m := _CHANNEL.search(line):
            remote, name = _transport(m.group(1))
            add(between if remote else within, name)
        elif m := _USING_NET.search(line):
            for device in _DEVICE.findall(m.group(2)):
                add(devices, device)
        elif m := _NETWORK.search(line):
            network = m.group(1)
        elif m := _NODES.search(line):
            ranks, nodes = max(ranks, int(m.group(1))), max(nodes, int(m.group(2)))
        elif m := _VERSION.search(line):
            version = version or m.group(1)
        elif m := _WARN.search(line):
            add(warnings, m.group(1).strip())
    # Devices of the plugin NCCL did not choose (e.g. Socket while probing) are noise.
    if network == "IB":
        devices = [d for d in devices if "/" in d]
    elif network == "Socket":
        devices = [d for d in devices if "/" not in d]
    return Fabric(version, network, tuple(devices), tuple(between), tuple(within), nodes, ranks, tuple(warnings))


def socket_fallback_warning(fabric: Fabric, hcas: list[str], log_dir: str) -> str | None:
    """A loud warning when NCCL talks TCP between nodes although the node has HCAs."""
    if not hcas or not fabric.sockets_between_nodes:
        return None
    return (
        f"NCCL uses TCP sockets between nodes although this node has InfiniBand HCAs ({', '.join(hcas)}):"
        " traffic between nodes is several times slower. Likely causes: /dev/infiniband not inside the"
        " container (do not run apptainer with --contain), no verbs provider in the image (rdma-core,"
        " libibverbs), or NCCL_IB_HCA / NCCL_IB_GID_INDEX (RoCE) naming the wrong device or GID."
        f" NCCL's own lines are in {log_dir}/*/{LOG_GLOB}"
    )


def read_logs(logs_root: str | Path, since: float) -> Fabric:
    """Every node's NCCL log under ``logs_root`` (logs/<node>/nccl.*.log) written since ``since``."""
    lines: list[str] = []
    for path in sorted(Path(logs_root).glob(f"*/{LOG_GLOB}")):
        try:
            if path.stat().st_mtime < since:
                continue
            with path.open(encoding="utf-8", errors="replace") as handle:
                lines.extend(handle)
        except OSError:
            continue
    return parse(lines)


def local_hcas() -> list[str]:
    root = Path("/sys/class/infiniband")
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
