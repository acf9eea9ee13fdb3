import socket
import sys
import time

import pytest

from vllm_hpc.errors import ChildDiedError
from vllm_hpc.raycluster import PortWatcher, membership, RayNode
from vllm_hpc.supervisor import Reporter, Supervisor

pytestmark = pytest.mark.unit


def test_port_watcher_names_the_node_that_stops_answering():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    supervisor = Supervisor(Reporter(sys.stderr, "test"))
    watcher = PortWatcher(supervisor, {"gpu02": ("127.0.0.1", port)}, interval=0.2, misses=3)
    watcher.start()
    time.sleep(1.0)
    assert supervisor.failure is None
    listener.close()
    t0 = time.monotonic()
    watcher.join(timeout=5)
    assert isinstance(supervisor.failure, ChildDiedError)
    assert "gpu02" in supervisor.failure.problem and time.monotonic() - t0 < 2


def test_membership_lists_missing_nodes_and_short_gpus():
    nodes = [RayNode("gpu01", "10.0.0.1", True, 4), RayNode("gpu02", "10.0.0.2", False, 4), RayNode("gpu03", "10.0.0.3", True, 2)]
    done, seen = membership(nodes, ("gpu01", "gpu02", "gpu03"), 4)
    assert not done
    assert "missing: gpu02" in seen and "gpu03 has 2 GPUs" in seen
    assert membership(nodes[:1], ("gpu01",), 4) == (True, "1/1 nodes, 4 GPUs")
