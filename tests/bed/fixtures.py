"""pytest fixtures that give tests a started emulated Slurm cluster.

``bed_cluster(nodes, gpus_per_node=4)`` (session scope) starts a cluster on first use
and returns the same one to every later test that asks for that shape; all of them
are stopped at the end of the session. ``cluster2`` and ``cluster3`` are the 2- and
3-node ones. ``fresh_cluster`` (function scope) is for tests that break their
cluster (killing a node): it is stopped when the test ends.

Every node sees the repository and pytest's temporary directories at their usual
paths, so job scripts and outputs can live in ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bed.cluster import Cluster, REQUIRED_TOOLS

REPO = Path(__file__).resolve().parents[2]
# Short on purpose: Slurm's and Ray's Unix socket paths live below it.
BED_BASE = Path("/run/vhb")

ClusterFactory = Callable[..., Cluster]


def _check_machine() -> None:
    if os.geteuid() != 0:
        pytest.skip("the emulated Slurm cluster needs root")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: run tests/bed/install-system.sh", pytrace=False)


def _stop_stale_clusters() -> None:
    """Stop clusters left by pytest runs that died without their teardown."""
    if not BED_BASE.is_dir():
        return
    for d in BED_BASE.iterdir():
        owner = d.name.split("-")[0].lstrip("p")
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            if (d / "state.json").exists():
                try:
                    Cluster.attach(d).stop()
                except Exception as e:  # a broken leftover must not hide the tests
                    print(f"could not stop stale cluster {d}: {e}")
            shutil.rmtree(d, ignore_errors=True)


def _new_cluster(name: str, nodes: int, gpus_per_node: int, tmp: Path) -> Cluster:
    root = BED_BASE / f"p{os.getpid()}-{name}"
    return Cluster(root, nodes=nodes, gpus_per_node=gpus_per_node, shared=[REPO, tmp])


@pytest.fixture(scope="session")
def bed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    _check_machine()
    _stop_stale_clusters()
    started: dict[tuple[int, int], Cluster] = {}
    basetemp = tmp_path_factory.getbasetemp()

    def get(nodes: int, gpus_per_node: int = 4) -> Cluster:
        key = (nodes, gpus_per_node)
        if key not in started:
            c = _new_cluster(f"{nodes}n{gpus_per_node}g", nodes, gpus_per_node, basetemp)
            c.start()
            started[key] = c
        return started[key]

    yield get
    for c in started.values():
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster2(bed_cluster: ClusterFactory) -> Cluster:
    return bed_cluster(2)


@pytest.fixture(scope="session")
def cluster3(bed_cluster: ClusterFactory) -> Cluster:
    return bed_cluster(3)


@pytest.fixture
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """A factory of clusters of the calling test's own, stopped when the test ends."""
    _check_machine()
    started: list[Cluster] = []

    def make(nodes: int = 2, gpus_per_node: int = 4) -> Cluster:
        c = _new_cluster(f"f{len(started)}", nodes, gpus_per_node,
                         tmp_path_factory.getbasetemp())
        started.append(c)
        c.start()
        return c

    yield make
    for c in started:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)
