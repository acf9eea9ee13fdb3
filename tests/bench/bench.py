"""Benchmarks of vllm-hpc on the test bed: prints a table, writes the same figures as JSON.

    .venv/bin/python tests/bench/bench.py [--quick] [--json out/bench.json]

1. start-up overhead, one node: process start to a successful one-token completion,
   `vllm-hpc serve` against bare vLLM on the same model, alternating;
2. cluster formation for 2, 3 and 4 emulated nodes: from the last node's task start
   until the leader sees every node and GPU; beside it Ray's own floor (bare `ray start`
   everywhere at once, the node table read through Ray's GCS client), started as vllm-hpc
   starts Ray (its head options, vllm_hpc.raystart: the floor it is held to) and with
   Ray's defaults, and the
   peers' ways (fixed sleeps of 10 s for the head and 5 s per worker, a 5 s poll of the
   node list);
3. what each of the Ray head's optional parts costs: a head alone, until it is in its
   own node table, with Ray's defaults and without the dashboard, the autoscaler
   monitor and the log monitor in turn, and through vllm_hpc.raystart (Ray's CLI
   without the command groups it only lists); vllm-hpc leaves out the dashboard, the
   monitor and the CLI groups;
4. failure detection: a worker node killed, until every process of the job is gone;
5. warm start: time to ready with a kept compile cache against an empty one;
6. the cost of the entrypoint itself: `vllm-hpc --help` and `vllm-hpc plan`.

Timings are of whole processes as seen from outside, on this machine, with the CPU
build of vLLM and the tiny model (so vLLM's own start-up is small and any overhead of
vllm-hpc shows). Every figure states how many runs it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from bed.cluster import Cluster  # noqa: E402
from helpers import (  # noqa: E402
    BIN, CPU_VLLM_ENV, MODEL_CACHE, STANDIN_ENV, VLLM_HPC, base_env, free_port, job_env, job_home,
    job_processes, serving_processes, stop_group, submit, wait_until,
)

from vllm_hpc.network import tcp_open  # noqa: E402
from vllm_hpc.readiness import probe_completion  # noqa: E402

PEER_SCRIPT = REPO / "tests" / "bench" / "peer_ray_cluster.sh"


def summary(values: list[float]) -> dict:
    return {
        "runs": len(values),
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "values": [round(v, 2) for v in values],
    }


def time_to_ready(argv: list[str], env: dict[str, str], url: str, key_path: Path | None, key: str | None, timeout: float = 600) -> float:
    """Start a server process, poll a one-token completion until it answers, stop it."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited {proc.returncode} before it was ready")
            api_key = key or (key_path.read_text().strip() if key_path and key_path.exists() else None)
            if api_key is not None or key_path is None:
                ok, _ = probe_completion(url, "tiny", api_key, timeout=5)
                if ok:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"not ready in {timeout}s")
            time.sleep(0.1)
    finally:
        stop_group(proc, grace=60)


def bench_startup(runs: int, work: Path) -> dict:
    model = str(MODEL_CACHE)
    bare, hpc = [], []
    for i in range(runs):
        for kind in (("bare", "hpc") if i % 2 == 0 else ("hpc", "bare")):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            common = ["--model", model, "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512"]
            if kind == "bare":
                env = {**base_env(work / "bare"), "VLLM_API_KEY": "bench-key"}
                argv = [str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", *common, "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1"]
                bare.append(time_to_ready(argv, env, url, None, "bench-key"))
            else:
                home = work / f"hpc{i}"
                env = base_env(home)
                proc_argv = [VLLM_HPC, "serve", *common, "--interface", "lo", "--liveness-interval", "0"]
                # The job id is the pid; the key file appears once the process started.
                hpc.append(_time_hpc(proc_argv, env, url, home))
            print(f"  start-up run {i + 1}/{runs} {kind}: {(bare if kind == 'bare' else hpc)[-1]:.1f}s", flush=True)
    b, h = statistics.median(bare), statistics.median(hpc)
    overhead = h - b
    target = max(2.0, 0.03 * b)
    return {"bare_vllm_s": summary(bare), "vllm_hpc_s": summary(hpc), "overhead_s": round(overhead, 2), "target_s": round(target, 2), "met": overhead <= target}


def _time_hpc(argv: list[str], env: dict[str, str], url: str, home: Path) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    key_path = home / "jobs" / f"local-{proc.pid}" / "api-key"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm-hpc serve exited {proc.returncode} before it was ready")
            if key_path.exists():
                ok, _ = probe_completion(url, "tiny", key_path.read_text().strip(), timeout=5)
                if ok:
                    return time.monotonic() - start
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench_warm(work: Path) -> dict:
    model = str(MODEL_CACHE)
    cache = work / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    figures = {}
    for label in ("cold", "warm"):
        port = free_port()
        home = work / f"warm-{label}"
        argv = [VLLM_HPC, "serve", "--model", model, "--served-model-name", "tiny", "--host", "127.0.0.1", "--interface", "lo",
                "--port", str(port), "--max-model-len", "512", "--liveness-interval", "0", "--compile-cache", str(cache)]
        figures[label] = _time_hpc(argv, base_env(home), f"http://127.0.0.1:{port}", home)
        print(f"  {label} start with compile cache {cache}: {figures[label]:.1f}s", flush=True)
    return {"cold_s": round(figures["cold"], 2), "warm_s": round(figures["warm"], 2), "runs": 1, "saved_s": round(figures["cold"] - figures["warm"], 2)}


def _log_times(job_dir: Path, nodes: list[str]) -> tuple[float, float]:
    """(last node's task start, the leader's 'all nodes joined' line), as epoch seconds;
    a line's "+N.Ns" counts from Slurm starting the node's task (apptainer, then vllm-hpc)."""
    day = datetime.now().strftime("%Y-%m-%d")

    def stamp(line: str) -> float:
        clock = line.split("]")[0].split()[2]
        return datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S.%f").timestamp()

    starts, joined = [], None
    for node in nodes:
        lines = (job_dir / "logs" / node / "vllm-hpc.log").read_text().splitlines()
        starts.append(stamp(lines[0]) - float(lines[0].split("]")[0].split()[3].strip("+s")))
        for line in lines:
            if "to join the Ray cluster: done" in line:
                joined = stamp(line)
    if joined is None:
        raise RuntimeError("the leader never saw every node")
    return max(starts), joined


def bench_formation(cluster: Cluster, runs: int) -> dict:
    """Each run forms the cluster once per way; the order rotates from run to run, so
    that no way always comes first (or always follows the same one)."""
    n = len(cluster.node_names)
    ways = ["vllm-hpc", *PEER_MODES]
    figures: dict[str, list[float]] = {way: [] for way in ways}
    for i in range(runs):
        home = job_home(f"bench-form{n}-{i}")
        for way in ways[i % len(ways):] + ways[: i % len(ways)]:
            figures[way].append(_vllm_hpc_formation(cluster, home) if way == "vllm-hpc" else _peer_formation(cluster, way, home))
        print(f"  {n} nodes run {i + 1}: vllm-hpc {figures['vllm-hpc'][-1]:.2f}s, "
              + ", ".join(f"{label} {figures[mode][-1]:.2f}s" for mode, (_, label) in PEER_MODES.items()), flush=True)
    return {"nodes": n, "vllm_hpc_s": summary(figures["vllm-hpc"]), **{key: summary(figures[mode]) for mode, (key, _) in PEER_MODES.items()}}


def _vllm_hpc_formation(cluster: Cluster, home: Path) -> float:
    env = job_env(cluster, home, **STANDIN_ENV)
    job = submit(cluster, "multinode.sbatch", [f"--nodes={len(cluster.node_names)}", "--gpus-per-node=4"],
                 ["--model", str(MODEL_CACHE), "--served-model-name", "tiny", "--liveness-interval", "0"], env, home / "job.out")
    try:
        wait_until("formation", lambda: "to join the Ray cluster: done" in _leader_log(home, job), 120)
        last_start, joined = _log_times(home / "jobs" / str(job), cluster.node_names)
        return joined - last_start
    finally:
        cluster.slurm(["scancel", str(job)], check=False)
        wait_until("job gone", lambda: not any(job_processes(cluster, node) for node in cluster.node_names), 60)


# The baselines of the formation figure: peer_ray_cluster.sh's modes, their JSON keys and labels.
PEER_MODES = {
    "ray-trimmed": ("ray_floor_s", "Ray's floor, started as vllm-hpc starts Ray"),
    "ray-default": ("ray_default_s", "bare `ray start`, default options"),
    "fixed-sleep": ("peer_fixed_sleep_s", "fixed sleeps"),
    "poll-5s": ("peer_poll_5s_s", "5 s poll"),
}


def _leader_log(home: Path, job: int) -> str:
    path = home / "jobs" / str(job) / "logs" / "gpu01" / "vllm-hpc.log"
    return path.read_text() if path.exists() else ""


def _peer_formation(cluster: Cluster, mode: str, home: Path) -> float:
    n = len(cluster.node_names)
    result = home / f"peer-{mode}.json"
    result.unlink(missing_ok=True)
    Path(f"{result}.starts").unlink(missing_ok=True)
    env = {**job_env(cluster, home), "PEER_MODE": mode, "PEER_RESULT": str(result), "RAY_BIN": str(BIN / "ray"), "RAY_PYTHON": str(BIN / "python"),
           "RAYSTART": " ".join(RAYSTART_CLI),
           "HEAD_IP": cluster.fabric_ip("gpu01"), "RAY_PORT": str(free_port())}
    job = cluster.sbatch([f"--nodes={n}", "--gpus-per-node=4", "--ntasks-per-node=1", f"--output={home / f'peer-{mode}.out'}",
                          "--wrap", f"srun {PEER_SCRIPT}"], env=env)
    try:
        wait_until(f"peer {mode} cluster", result.exists, 180)
        data = json.loads(result.read_text())
        return data["joined"] - data["last_task_start"]
    finally:
        cluster.slurm(["scancel", str(job)], check=False)
        wait_until("peer job gone", lambda: not any(job_processes(cluster, node) for node in cluster.node_names), 60)


# Ray's CLI as installed, and as vllm-hpc runs it (without the CLI groups it only lists).
RAY_CLI = [str(BIN / "ray")]
RAYSTART_CLI = [str(BIN / "python"), "-m", "vllm_hpc.raystart"]

# A head's launcher and options, each step leaving out one more of what Ray starts.
HEAD_OPTIONS = {
    "defaults": (RAY_CLI, []),
    "no dashboard": (RAY_CLI, ["--include-dashboard=false"]),
    "no dashboard, no monitor": (RAY_CLI, ["--include-dashboard=false", "--no-monitor"]),
    "no dashboard, no monitor, no log monitor": (RAY_CLI, ["--include-dashboard=false", "--no-monitor", "--include-log-monitor=false"]),
    "no dashboard, no monitor, CLI without its optional groups (vllm-hpc)": (RAYSTART_CLI, ["--include-dashboard=false", "--no-monitor"]),
}


def bench_head(runs: int, work: Path) -> dict:
    """A Ray head alone on this machine (loopback), from `ray start` until the head is
    ALIVE in its own node table; the options alternate within each run."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    figures: dict[str, list[float]] = {name: [] for name in HEAD_OPTIONS}
    for i in range(runs):
        for name, (launcher, options) in HEAD_OPTIONS.items():
            port, tmp = free_port(), work / f"ray-head-{i}"
            shutil.rmtree(tmp, ignore_errors=True)
            t0 = time.monotonic()
            head = subprocess.Popen([*launcher, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
                                     "--num-gpus", "4", "--temp-dir", str(tmp), "--disable-usage-stats", *options],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_until("head's port", lambda: tcp_open("127.0.0.1", port, timeout=0.2), 120, interval=0.05)
                client = GcsClient(address=f"127.0.0.1:{port}")
                wait_until("head alive", lambda: any(n.state == GcsNodeInfo.ALIVE for n in client.get_all_node_info(timeout=5).values()), 120, interval=0.05)
                figures[name].append(time.monotonic() - t0)
            finally:
                stop_group(head, grace=10, kill_wait=10)
                # Ray's processes leave the group; each names the temp dir.
                subprocess.run(["pkill", "-KILL", "-f", str(tmp)], check=False)
                time.sleep(1)
            print(f"  run {i + 1}, {name}: {figures[name][-1]:.2f}s", flush=True)
    return {name: summary(values) for name, values in figures.items()}


def bench_failure(cluster: Cluster) -> dict:
    home = job_home("bench-fail")
    env = job_env(cluster, home, **STANDIN_ENV)
    out = home / "job.out"
    job = submit(cluster, "multinode.sbatch", ["--nodes=2", "--gpus-per-node=4"],
                 ["--model", str(MODEL_CACHE), "--served-model-name", "tiny", "--liveness-interval", "0"], env, out)
    wait_until("job ready", lambda: (home / "jobs" / str(job) / "endpoint.json").exists(), 180)
    t0 = time.monotonic()
    cluster.kill_node("gpu02")
    wait_until("serving processes gone", lambda: not serving_processes(cluster, "gpu01"), 60, interval=0.05)
    took = time.monotonic() - t0
    # srun, and so the Slurm job, ends only once Slurm declares the node dead (SlurmdTimeout).
    wait_until("job processes gone", lambda: not job_processes(cluster, "gpu01"), 120, interval=0.1)
    job_end = time.monotonic() - t0
    return {"detect_and_stop_s": round(took, 2), "slurm_job_end_s": round(job_end, 2), "runs": 1, "target_s": 10.0, "met": took <= 10.0}


def bench_entrypoint(runs: int, work: Path) -> dict:
    model = work / "m"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    env = base_env(work / "cli")
    figures = {}
    for label, args in (("help", ["--help"]), ("plan", ["plan", "--model", str(model), "--interface", "lo"])):
        values = []
        subprocess.run([VLLM_HPC, *args], env=env, capture_output=True, check=True)
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([VLLM_HPC, *args], env=env, capture_output=True, check=True)
            values.append(time.monotonic() - t0)
        figures[label] = summary(values)
    worst = max(figures["help"]["median"], figures["plan"]["median"])
    return {**figures, "target_s": 0.5, "met": worst < 0.5}


def render(results: dict) -> str:
    rows = [("figure", "vllm-hpc", "baseline", "target", "met")]
    e = results.get("entrypoint")
    if e:
        rows.append(("`vllm-hpc --help` wall (median)", f"{e['help']['median']}s ({e['help']['runs']} runs)", "", "< 0.5 s", str(e["met"])))
        rows.append(("`vllm-hpc plan` wall (median)", f"{e['plan']['median']}s ({e['plan']['runs']} runs)", "", "< 0.5 s", str(e["met"])))
    s = results.get("startup")
    if s:
        rows.append(("start to first completion, 1 node", f"{s['vllm_hpc_s']['median']}s [{s['vllm_hpc_s']['min']}-{s['vllm_hpc_s']['max']}] ({s['vllm_hpc_s']['runs']} runs)",
                     f"bare vLLM {s['bare_vllm_s']['median']}s [{s['bare_vllm_s']['min']}-{s['bare_vllm_s']['max']}]", f"overhead <= {s['target_s']}s", f"{s['met']} ({s['overhead_s']:+}s)"))
    for f in results.get("formation", []):
        floor, default = f["ray_floor_s"]["median"], f["ray_default_s"]["median"]
        over = round(f["vllm_hpc_s"]["median"] - floor, 2)
        rows.append((f"cluster formation, {f['nodes']} nodes", f"{f['vllm_hpc_s']['median']}s [{f['vllm_hpc_s']['min']}-{f['vllm_hpc_s']['max']}] ({f['vllm_hpc_s']['runs']} runs)",
                     f"Ray's floor {floor}s (vllm-hpc {over:+}); bare `ray start` {default}s (floor {floor - default:+.2f});"
                     f" fixed sleeps {f['peer_fixed_sleep_s']['median']}s; 5 s poll {f['peer_poll_5s_s']['median']}s",
                     "<= floor + 0.5 s; floor < bare", f"{over <= 0.5} / {floor < default}"))
    for name, h in (results.get("head") or {}).items():
        rows.append((f"Ray head alone to ALIVE, {name}", f"{h['median']}s [{h['min']}-{h['max']}] ({h['runs']} runs)", "", "", ""))
    d = results.get("failure")
    if d:
        rows.append(("worker node killed -> vllm-hpc stopped", f"{d['detect_and_stop_s']}s (1 run)", f"Slurm job over after {d['slurm_job_end_s']}s", "<= 10 s", str(d["met"])))
    w = results.get("warm")
    if w:
        rows.append(("time to ready, compile cache kept", f"warm {w['warm_s']}s", f"cold {w['cold_s']}s", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of each figure")
    parser.add_argument("--json", default=str(REPO / "out" / "bench.json"), help="where to write the figures")
    parser.add_argument("--only", nargs="*", default=["entrypoint", "startup", "head", "formation", "failure", "warm"])
    parser.add_argument("--nodes", nargs="*", type=int, default=[2, 3, 4], help="node counts of the formation figures")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    subprocess.run([str(BIN / "python"), str(REPO / "tests/bed/tiny_model.py"), str(MODEL_CACHE)], check=True)
    results: dict = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs", "when": datetime.now().isoformat(timespec="seconds"), "quick": args.quick}
    os.environ.update(CPU_VLLM_ENV)
    with tempfile.TemporaryDirectory(prefix="vhb-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        if "entrypoint" in args.only:
            print("entrypoint cost", flush=True)
            results["entrypoint"] = bench_entrypoint(10 if not args.quick else 3, work)
        if "startup" in args.only:
            print("start-up overhead (CPU vLLM, tiny model)", flush=True)
            results["startup"] = bench_startup(runs, work)
        if "warm" in args.only:
            print("warm start", flush=True)
            results["warm"] = bench_warm(work)
        if "head" in args.only:
            print("Ray head's processes", flush=True)
            results["head"] = bench_head(runs, work)
        if "formation" in args.only:
            results["formation"] = []
            for n in args.nodes:
                print(f"cluster formation, {n} nodes", flush=True)
                with Cluster(Path(f"/run/vhb/bench{n}"), nodes=n, gpus_per_node=4, shared=[REPO, work]) as cluster:
                    results["formation"].append(bench_formation(cluster, runs))
        if "failure" in args.only:
            print("failure detection", flush=True)
            with Cluster(Path("/run/vhb/benchf"), nodes=2, gpus_per_node=4, shared=[REPO, work]) as cluster:
                results["failure"] = bench_failure(cluster)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"machine: {results['machine']}; CPU build of vLLM, tiny model; figures in {args.json}")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
