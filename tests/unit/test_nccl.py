"""Reading what NCCL chose from its debug log (data/nccl/README.md says where each log is from)."""

from pathlib import Path

import pytest

from vllm_hpc import nccl

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "nccl"


def parsed(name: str) -> nccl.Fabric:
    return nccl.parse((DATA / name).read_text().splitlines())


def test_a_real_one_rank_log_from_the_gpu_machine():
    fabric = parsed("h200-one-rank-socket.log")
    assert (fabric.version, fabric.network, fabric.devices) == ("2.28.9+cuda13.0", "Socket", ("eth0:192.0.2.2<0>",))
    assert (fabric.nodes, fabric.ranks, fabric.between_nodes, fabric.within_node) == (1, 1, (), ())
    assert not fabric.sockets_between_nodes  # one node: nothing crosses a network
    assert fabric.summary() == "NCCL 2.28.9+cuda13.0: one node, network Socket unused"
    assert nccl.socket_fallback_warning(fabric, ["mlx5_0"], "/j/logs") is None


def test_a_real_failed_ib_start_keeps_nccls_warning():
    fabric = parsed("h200-ib-forced-no-hca.log")
    assert fabric.network is None and fabric.devices == ()
    assert "Failed to initialize any NET plugin" in fabric.warnings


def test_a_real_two_node_job_over_sockets_on_ib0():
    lines = []
    for node in ("n0", "n1"):
        lines += (DATA / f"h200-two-namespace-nodes-socket-{node}.log").read_text().splitlines()
    fabric = nccl.parse(lines)
    assert (fabric.version, fabric.network, fabric.nodes, fabric.ranks) == ("2.28.9+cuda13.0", "Socket", 2, 2)
    assert fabric.between_nodes == ("NET/Socket",) and fabric.sockets_between_nodes
    assert fabric.devices == ("ib0:10.231.0.1<0>", "ib0:10.231.0.2<0>")
    assert fabric.summary() == "NCCL 2.28.9+cuda13.0: between nodes NET/Socket (ib0:10.231.0.1, ib0:10.231.0.2)"
    assert nccl.socket_fallback_warning(fabric, [], "/j/logs") is None  # namespaces without HCAs: no warning
    assert "mlx5_0" in (nccl.socket_fallback_warning(fabric, ["mlx5_0"], "/j/logs") or "")


def test_infiniband_between_nodes_with_gpudirect():
    fabric = parsed("two-nodes-ib.log")
    assert fabric.network == "IB" and fabric.devices == ("mlx5_0:1/IB", "mlx5_1:1/IB")
    assert fabric.between_nodes == ("NET/IB+GDRDMA",) and fabric.within_node == ("P2P/CUMEM",)
    assert (fabric.nodes, fabric.ranks) == (2, 8)
    assert fabric.summary() == "NCCL 2.26.2+cuda12.2: between nodes NET/IB+GDRDMA (mlx5_0:1/IB, mlx5_1:1/IB); within a node P2P/CUMEM"
    assert nccl.socket_fallback_warning(fabric, ["mlx5_0", "mlx5_1"], "/j/logs") is None


def test_sockets_between_nodes_warn_only_where_the_node_has_hcas():
    fabric = parsed("two-nodes-socket.log")
    assert fabric.between_nodes == ("NET/Socket",) and fabric.sockets_between_nodes
    assert fabric.devices == ("ib0:10.10.0.11<0>", "ib0:10.10.0.12<0>")
    assert "between nodes NET/Socket (ib0:10.10.0.11, ib0:10.10.0.12)" in fabric.summary()
    warning = nccl.socket_fallback_warning(fabric, ["mlx5_0"], "/j/logs")
    assert warning and "mlx5_0" in warning and "--contain" in warning and "NCCL_IB_HCA" in warning and "/j/logs/*/nccl.*.log" in warning
    assert nccl.socket_fallback_warning(fabric, [], "/j/logs") is None  # an Ethernet-only cluster


def test_read_logs_takes_every_nodes_files_of_this_run_only(tmp_path):
    old, new = tmp_path / "gpu01" / "nccl.gpu01.1.log", tmp_path / "gpu02" / "nccl.gpu02.2.log"
    for path, name in ((old, "two-nodes-ib.log"), (new, "two-nodes-socket.log")):
        path.parent.mkdir()
        path.write_text((DATA / name).read_text())
    import os

    os.utime(old, (1000, 1000))
    fabric = nccl.read_logs(tmp_path, since=2000)
    assert fabric.network == "Socket" and fabric.between_nodes == ("NET/Socket",)
    assert not nccl.read_logs(tmp_path / "none", since=0).seen
