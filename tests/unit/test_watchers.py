import socket
import subprocess
import sys
import time

import pytest

from vllm_hpc.errors import EXIT_CHILD_DIED, NodeLostError, ResourceError
from vllm_hpc.raycluster import PortWatcher, membership, RayNode
from vllm_hpc.supervisor import Reporter, Supervisor, start_from_proc

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
    # A lost node (exit 7), named, with the nodes the batch script drops from the job.
    assert isinstance(supervisor.failure, NodeLostError) and supervisor.failure.exit_code == EXIT_CHILD_DIED
    assert supervisor.failure.nodes == ("gpu02",)
    assert "gpu02" in supervisor.failure.problem and time.monotonic() - t0 < 2


def test_membership_lists_missing_nodes():
    nodes = [RayNode("gpu01", "10.0.0.1", True, 4), RayNode("gpu02", "10.0.0.2", False, 4)]
    done, seen = membership(nodes, ("gpu01", "gpu02", "gpu03"), 4)
    assert not done
    assert seen == "1/3 nodes, 4 GPUs; missing: gpu02, gpu03"
    assert membership(nodes[:1], ("gpu01",), 4) == (True, "1/1 nodes, 4 GPUs")


def test_membership_refuses_uneven_gpus_as_soon_as_the_node_joins():
    """--gpus=8 over 2 nodes may give 6 + 2: the leader says so when the node joins, not at the deadline."""
    nodes = [RayNode("gpu01", "10.0.0.1", True, 6), RayNode("gpu02", "10.0.0.2", True, 2)]
    with pytest.raises(ResourceError) as err:
        membership(nodes, ("gpu01", "gpu02", "gpu03"), 6)
    assert "uneven GPU counts: gpu02 has 2, the leader 6" in err.value.one_line()
    assert err.value.exit_code == 4


def test_the_timeline_counts_from_the_task_slurm_started():
    # This Python, under apptainer, under bash (the task), under slurmstepd: the task's start.
    chain = [("python3", 5000), ("apptainer", 4980), ("bash", 4900), ("slurmstepd", 4000), ("systemd", 1)]
    assert start_from_proc(chain, uptime_s=60.0, now=1000.0, ticks_per_s=100) == pytest.approx(989.0)
    # Not under Slurm: this process's own start.
    chain = [("python3", 5000), ("bash", 4900), ("sshd", 100)]
    assert start_from_proc(chain, uptime_s=60.0, now=1000.0, ticks_per_s=100) == pytest.approx(990.0)


def test_the_timeline_start_is_this_process_start_to_a_tenth_of_a_second(tmp_path):
    """Read from the real /proc: a child started now reports a start within 0.1 s of now
    (psutil's create_time can be up to 1 s off)."""
    code = "import time; from vllm_hpc.supervisor import _task_start; time.sleep(0.5); print(_task_start())"
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert abs(float(out) - before) < 0.1, (float(out), before)
