"""The emulated Slurm cluster itself: identity of each node, GPUs, scancel, node
death, a clean stop, and a Ray cluster over the fabric interface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bed.cluster import BedError, Cluster, find_leftovers, wait_for

pytestmark = pytest.mark.integration

JOBS = Path(__file__).resolve().parent / "bed_jobs"
REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def log(message: str) -> None:
    print(f"[test] {message}", flush=True)


def job_processes(c: Cluster, node: str) -> list[tuple[int, str]]:
    """Processes of a node other than its init and slurmd."""
    return [(pid, cmd) for pid, cmd in c.node_processes(node)
            if " _init " not in cmd and not cmd.startswith("slurmd ")]


def read_output(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.startswith("{")]


@pytest.mark.parametrize("cluster_name", ["cluster2", "cluster3"])
def test_each_node_reports_its_identity(cluster_name: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    c: Cluster = request.getfixturevalue(cluster_name)
    n = len(c.node_names)
    out = tmp_path / "out.txt"
    t0 = time.monotonic()
    job = c.sbatch([f"--nodes={n}", "--ntasks-per-node=1", "--gres=gpu:4",
                    f"--output={out}", f"--chdir={tmp_path}",
                    "--wrap", f"srun {JOBS / 'report_node.sh'}"])
    c.wait_job(job, {"COMPLETED"}, timeout=60)
    log(f"{n}-node job {job}: submit to done in {time.monotonic() - t0:.2f} s")

    reports = sorted(read_output(out), key=lambda r: r["slurmd_nodename"])
    assert [r["slurmd_nodename"] for r in reports] == c.node_names, out.read_text()
    assert c.node_names == [f"gpu{i:02d}" for i in range(1, n + 1)]
    for r in reports:
        node = r["slurmd_nodename"]
        # Slurm's name for the node is not its hostname, as where slurm.conf sets NodeHostname.
        assert r["hostname"] == c.hostname(node) == f"host-{node}"
        assert r["ib0"] == c.fabric_ip(node)
        assert r["mgmt"] == c.mgmt_ip(node)
        assert r["mgmt"] != r["ib0"]
        assert r["nodeid"] == str(c.node_names.index(node))
        assert r["gpus_on_node"] == "4"
        assert r["cuda_visible_devices"] == "0,1,2,3"
        assert r["nodelist"] == c.hostlist


def test_gpus_per_node_option_and_too_many_gpus(cluster2: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = cluster2.sbatch(["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=2",
                           f"--output={out}", "--wrap", f"srun {JOBS / 'report_node.sh'}"])
    cluster2.wait_job(job, {"COMPLETED"}, timeout=60)
    reports = read_output(out)
    assert len(reports) == 2
    assert {r["gpus_on_node"] for r in reports} == {"2"}
    assert {len(r["cuda_visible_devices"].split(",")) for r in reports} == {2}

    with pytest.raises(BedError):
        cluster2.sbatch(["--nodes=2", "--gpus-per-node=5", "--wrap", "true"])


def test_scancel_ends_every_step_process(cluster2: Cluster, tmp_path: Path) -> None:
    c = cluster2
    job = c.sbatch(["--nodes=2", "--ntasks-per-node=1", f"--output={tmp_path / 'out.txt'}",
                    "--wrap", "srun bash -c 'sleep 600 & sleep 601; wait'"])
    c.wait_job(job, {"RUNNING"}, timeout=30)

    def sleeping_everywhere() -> bool:
        return all(any("sleep 60" in cmd for _, cmd in c.node_processes(n))
                   for n in c.node_names)

    wait_for("a sleep step on every node", sleeping_everywhere, 30, log)
    t0 = time.monotonic()
    c.slurm(["scancel", str(job)])

    def nothing_left() -> bool:
        return not any(job_processes(c, n) for n in c.node_names)

    wait_for(f"every process of job {job} to end", nothing_left, 30, log,
             seen=lambda: str({n: job_processes(c, n) for n in c.node_names}))
    log(f"scancel to no process left: {time.monotonic() - t0:.2f} s")
    c.wait_job(job, {"CANCELLED"}, timeout=30)


def test_kill_node_ends_all_of_it(fresh_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = fresh_cluster(2)
    job = c.sbatch(["--nodes=2", "--output=/dev/null",
                    "--wrap", "srun sleep 600"])
    c.wait_job(job, {"RUNNING"}, timeout=30)
    wait_for("sleep on gpu02", lambda: any("sleep" in cmd for _, cmd in
                                            c.node_processes("gpu02")), 30, log)
    slurmd_gpu02 = ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{c.mgmt_ip('gpu02')}/6818"]
    assert c.node_exec("gpu01", slurmd_gpu02, capture_output=True).returncode == 0
    c.kill_node("gpu02")
    assert c.node_processes("gpu02") == []
    assert c.node_exec("gpu01", slurmd_gpu02, capture_output=True).returncode != 0
    # the other node and the controller are unaffected
    assert any(cmd.startswith("slurmd ") for _, cmd in c.node_processes("gpu01"))
    assert c.slurm(["scontrol", "ping"]).returncode == 0


def test_stop_leaves_nothing_behind(fresh_cluster) -> None:  # type: ignore[no-untyped-def]
    c: Cluster = fresh_cluster(3)
    slot = c._layout().slot
    job = c.sbatch(["--nodes=3", "--output=/dev/null", "--wrap", "srun sleep 600"])
    c.wait_job(job, {"RUNNING"}, timeout=30)
    c.stop()
    assert find_leftovers(c.root, slot) == []


def test_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    class BrokenController(Cluster):
        def _write_files(self, layout):  # type: ignore[no-untyped-def]
            super()._write_files(layout)
            with open(layout.slurm_conf, "a") as f:
                f.write("NoSuchOption=1\n")

    root = Path(f"/run/vhb/p{os.getpid()}-broken")
    c = BrokenController(root, nodes=2, start_timeout=20)
    try:
        with pytest.raises(BedError, match="NoSuchOption"):
            c.start()
        assert find_leftovers(root, c._layout().slot) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_node_has_its_own_tmp_and_processes(cluster2: Cluster) -> None:
    c = cluster2
    marker = f"bed-{os.getpid()}"
    c.node_exec("gpu01", ["touch", f"/tmp/{marker}"], check=True)
    seen = {n: c.node_exec(n, ["ls", "/tmp"], capture_output=True, text=True).stdout.split()
            for n in c.node_names}
    assert marker in seen["gpu01"]
    assert marker not in seen["gpu02"]
    assert not Path(f"/tmp/{marker}").exists()
    c.node_exec("gpu01", ["rm", f"/tmp/{marker}"], check=True)
    ps = c.node_exec("gpu02", ["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert "slurmd -D -N gpu02" in ps and "gpu01" not in ps
    names = c.node_exec("gpu02", ["hostname"], capture_output=True, text=True).stdout.strip()
    assert names == "host-gpu02"
    routes = c.node_exec("gpu02", ["ip", "route"], capture_output=True, text=True).stdout
    assert "default" not in routes


def _venv_has_ray() -> bool:
    if not VENV_PYTHON.exists():
        return False
    return subprocess.run([str(VENV_PYTHON), "-c", "import ray"],
                          capture_output=True).returncode == 0


def test_ray_cluster_forms_over_ib0(cluster2: Cluster, tmp_path: Path) -> None:
    if not _venv_has_ray():
        pytest.skip(f"{VENV_PYTHON} cannot import ray (create .venv with Ray first)")
    c = cluster2
    result = tmp_path / "ray.json"
    env = {"RAY_BIN": str(VENV_PYTHON.parent / "ray"), "RAY_PYTHON": str(VENV_PYTHON),
           "HEAD_IP": c.fabric_ip("gpu01"), "RAY_PORT": "6390", "RAY_RESULT": str(result)}
    t0 = time.monotonic()
    job = c.sbatch(["--nodes=2", "--nodelist=gpu[01-02]", "--ntasks-per-node=1",
                    "--gres=gpu:4", f"--output={tmp_path / 'out.txt'}",
                    "--wrap", f"srun {JOBS / 'ray_pair.sh'}"], env=env)
    try:
        def formed() -> bool:
            state = c.job_state(job)
            if state not in ("PENDING", "CONFIGURING", "RUNNING"):
                raise BedError(f"Ray job ended {state}: "
                               + (tmp_path / "out.txt").read_text()[-3000:])
            return result.exists()

        def last_output_line() -> str:
            out = tmp_path / "out.txt"
            lines = out.read_text().strip().splitlines() if out.exists() else []
            return lines[-1][-160:] if lines else ""

        wait_for("a 2-node Ray cluster", formed, 180, log, seen=last_output_line)
        log(f"Ray cluster over ib0 formed {time.monotonic() - t0:.1f} s after submit")
        nodes = json.loads(result.read_text())
        assert sorted(n["ip"] for n in nodes) == [c.fabric_ip("gpu01"), c.fabric_ip("gpu02")]
        assert sorted(n["hostname"] for n in nodes) == ["host-gpu01", "host-gpu02"]
        assert all(n["gpus"] == 4 for n in nodes)
    finally:
        c.slurm(["scancel", str(job)], check=False)

    wait_for("Ray processes to end after scancel",
             lambda: not any(job_processes(c, n) for n in c.node_names), 60, log,
             seen=lambda: str({n: job_processes(c, n) for n in c.node_names}))
