"""Choosing the fabric interface and address of this node.

Reading the machine (``read_interfaces``) is kept apart from choosing
(``choose_interface``), which is pure and tested on made-up interface tables.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from .errors import NetworkError

# Name prefixes of high-speed fabrics, best first: InfiniBand, then Slingshot and others.
PREFERRED_PREFIXES: tuple[str, ...] = ("ib", "hsn", "ipogif", "opa")


@dataclass(frozen=True)
class Interface:
    name: str
    ipv4: str | None
    is_up: bool
    is_loopback: bool


@dataclass(frozen=True)
class NetworkChoice:
    interface: str
    ip: str
    reason: str


def choose_interface(
    interfaces: list[Interface],
    requested: str | None,
    default_route: str | None,
) -> NetworkChoice:
    """Pick the interface this node's vLLM, Ray, NCCL and Gloo should use.

    Order: the requested one; then InfiniBand and other high-speed fabric names;
    then the interface of the default route. Never loopback unless asked for by name.
    """
    by_name = {i.name: i for i in interfaces}
    if requested:
        found = by_name.get(requested)
        if found is None:
            names = ", ".join(sorted(by_name)) or "none"
            raise NetworkError(
                f"network interface {requested!r} does not exist on this node (it has: {names})",
                "pass --interface with one of those names or unset VLLM_HPC_INTERFACE",
            )
        if not found.ipv4:
            raise NetworkError(f"network interface {requested!r} has no IPv4 address", "choose another with --interface")
        if not found.is_up:
            raise NetworkError(f"network interface {requested!r} is down", "choose another with --interface")
        return NetworkChoice(found.name, found.ipv4, "requested")

    usable = [i for i in interfaces if i.is_up and i.ipv4 and not i.is_loopback and not i.ipv4.startswith("127.")]
    for prefix in PREFERRED_PREFIXES:
        for iface in sorted(usable, key=lambda i: i.name):
            if iface.name.startswith(prefix):
                return NetworkChoice(iface.name, iface.ipv4 or "", f"fabric name {prefix}*")
    if default_route:
        for iface in usable:
            if iface.name == default_route:
                return NetworkChoice(iface.name, iface.ipv4 or "", "default route")
    if len(usable) >= 1:
        first = sorted(usable, key=lambda i: i.name)[0]
        return NetworkChoice(first.name, first.ipv4 or "", "only non-loopback interface" if len(usable) == 1 else "first non-loopback interface")
    raise NetworkError(
        "no usable network interface: none is up with an IPv4 address other than loopback",
        "check the node's network or name one with --interface",
    )


def read_interfaces() -> list[Interface]:
    import psutil

    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    result = []
    for name, entries in addrs.items():
        ipv4 = next((a.address for a in entries if a.family == socket.AF_INET), None)
        stat = stats.get(name)
        is_up = bool(stat and stat.isup)
        result.append(Interface(name, ipv4, is_up, name == "lo" or (ipv4 or "").startswith("127.")))
    return result


def parse_default_route(proc_net_route: str) -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route's text."""
    for line in proc_net_route.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "00000000":
            return fields[0]
    return None


def read_default_route() -> str | None:
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            return parse_default_route(handle.read())
    except OSError:
        return None


def port_is_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            if err.errno == errno.EACCES:
                raise NetworkError(
                    f"port {port} on {ip} needs a privilege this user lacks (ports below 1024 do)",
                    "choose a port of 1024 or above with --port",
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise NetworkError(f"address {ip} is not on this node", "check --host and --interface") from None
            raise
    return True


def tcp_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on ``ip:port`` within ``timeout``."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False
