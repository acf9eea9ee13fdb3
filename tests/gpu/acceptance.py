#!/usr/bin/env python3
"""GPU acceptance test: real vLLM served bare and through `vllm-hpc serve`, side by side.

Run it on a GPU node (2 GPUs for every configuration, 1 GPU for the first only):

    python3 tests/gpu/acceptance.py --model /path/to/model --workdir /tmp/vhpc-accept
    python3 tests/gpu/acceptance.py --make-model --workdir /tmp/vhpc-accept --quick
    apptainer exec --nv vllm-hpc.sif python3 tests/gpu/acceptance.py --make-model ...

The configurations, each served once bare (`python -m vllm.entrypoints.openai.api_server`
started by hand) and once by `vllm-hpc serve` from this checkout:

  single     1 GPU each. With 2 GPUs the bare server (GPU 0) and vllm-hpc (GPU 1)
             start at the same moment, so both see the same machine load.
  tp2        one node, 2 GPUs, tensor parallel 2 (one after the other).
  multinode  configuration C: two emulated nodes, each a network namespace with its
             own hostname and a veth named ib0 on a private bridge (10.231.0.0/24 by
             default), one GPU each. vllm-hpc runs as under Slurm (SLURM_JOB_ID,
             SLURM_NODEID, SLURM_JOB_NUM_NODES, SLURM_JOB_NODELIST, SLURM_GPUS_ON_NODE=1,
             one shared VLLM_HPC_HOME): rank 0 leads (Ray head + vLLM with the Ray
             executor, pipeline parallel 2), rank 1 joins as a Ray worker. The bare
             counterpart is `ray start` on both namespaces and the server by hand.
             Afterwards the worker "node" is cut off (its link goes down and every
             process in its namespace is killed) and the leader must exit non-zero
             naming that node. Needs root, `ip` (iproute2) and `unshare`.

For each run: time to ready (process start to the first successful one-token
completion, polled every 0.5 s by this script for both kinds), one chat completion,
a warm-up burst, then `vllm bench serve` (random dataset, 512 tokens in, 128 out,
400 prompts, at most 64 in flight; --quick: 128 prompts). vllm-hpc runs are reached
with the API key from `<VLLM_HPC_HOME>/jobs/<job>/api-key`; bare runs get their own
key through VLLM_API_KEY, so both pay the same key check.

Like with like: every run starts from its own empty compile caches (VLLM_CACHE_ROOT,
TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR under the run's directory), so no run profits
from an earlier one's torch.compile or Triton work; the order of bare and vllm-hpc
alternates between configurations.

Output: one table (config, kind, time to ready, req/s, output tok/s, mean TTFT,
mean TPOT) and the differences of vllm-hpc from bare, and a JSON file with
everything (`--json`, default <workdir>/results.json); logs stay under <workdir>.
`--report FILE...` prints the table again from saved JSON files.

Without an NVIDIA GPU it prints why and exits 0 (nothing to test here). Exit code 1
when a run or the failure check failed, 0 otherwise; the 3 % comparison is reported,
not enforced (`--tolerance`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import glob
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVED_NAME = "llama-1b-random"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
READY_POLL_S = 0.5
SKIP_EXIT = 0

# Environment every started program gets unless the caller's environment says otherwise.
# NVLink multicast stays off: some shared hosts forbid it.
SAFE_DEFAULTS = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# Dropped from the caller's environment: a test runs its own Slurm, Ray and key settings.
DROPPED_PREFIXES = ("SLURM_", "VLLM_HPC_", "RAY_", "CUDA_VISIBLE_DEVICES", "VLLM_API_KEY", "OPENAI_API_KEY")


def log(message: str) -> None:
    print(f"[acceptance {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Failed(Exception):
    """A run did not do what it must; the message says what was seen."""


# --------------------------------------------------------------------------- machine
def count_gpus() -> tuple[int, list[str]]:
    if not shutil.which("nvidia-smi"):
        return 0, []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0, []
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return len(names), names


def gpu_processes() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def wait_gpus_free(timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = gpu_processes()
        if not seen:
            return
        time.sleep(1.0)
    log(f"warning: GPU processes still present after {timeout:.0f}s: {seen}")


def module_version(name: str, python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", f"import {name}; print({name}.__version__)"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- processes
@dataclass
class Proc:
    """A started program: its log, and the lines of its stderr with arrival times when watched."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    _tree: set[int] = field(default_factory=set)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_tree(self) -> None:
        """Note every descendant now: children that start their own sessions are still found at stop."""
        try:
            import psutil

            self._tree.update(p.pid for p in psutil.Process(self.popen.pid).children(recursive=True))
        except Exception:  # noqa: BLE001 - gone already
            pass

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_bytes()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start(name: str, argv: list[str], env: dict[str, str], log_path: Path, watch_lines: bool = False) -> Proc:
    """Start ``argv`` in its own session; output to ``log_path`` (and kept line by line if ``watch_lines``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "ab")
    handle.write(f"# {shlex.join(argv)}\n".encode())
    handle.flush()
    started = time.monotonic()
    popen = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if watch_lines else handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc = Proc(name, popen, log_path, started)
    if watch_lines:

        def pump() -> None:
            assert popen.stdout is not None
            for raw in popen.stdout:
                proc.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
                handle.write(raw)
                handle.flush()
            handle.close()

        threading.Thread(target=pump, name=f"pump-{name}", daemon=True).start()
    else:
        handle.close()
    log(f"started {name} (pid {popen.pid}): {shlex.join(argv)[:300]}")
    return proc


def stop(proc: Proc, timeout: float = 60.0) -> int | None:
    """SIGTERM, wait, then SIGKILL the process, its group and every descendant seen."""
    import psutil

    proc.remember_tree()
    if proc.alive():
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{proc.name} did not stop within {timeout:.0f}s after SIGTERM: killing it")
    for pid in [proc.popen.pid, *proc._tree]:
        try:
            p = psutil.Process(pid)
            for child in p.children(recursive=True):
                child.kill()
            p.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


# --------------------------------------------------------------------------- HTTP
def completion_ok(url: str, model: str, key: str | None, timeout: float = 5.0) -> tuple[bool, str]:
    import requests

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = requests.post(
            f"{url}/v1/completions",
            json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
            headers=headers,
            timeout=timeout,
        )
    except requests.RequestException as err:
        return False, type(err).__name__
    if reply.status_code != 200:
        return False, f"HTTP {reply.status_code}"
    try:
        return bool(reply.json().get("choices")), "answered"
    except ValueError:
        return False, "not JSON"


def chat_once(url: str, model: str, key: str | None) -> dict[str, Any]:
    import requests

    started = time.monotonic()
    reply = requests.post(
        f"{url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Say hello."}],
            "max_tokens": 32,
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=120,
    )
    took = time.monotonic() - started
    if reply.status_code != 200:
        raise Failed(f"chat completion answered HTTP {reply.status_code}: {reply.text[:300]}")
    body = reply.json()
    text = body["choices"][0]["message"]["content"] or ""
    return {"ok": True, "seconds": round(took, 3), "completion_tokens": (body.get("usage") or {}).get("completion_tokens"), "reply_start": text[:60]}


def unauthorized_without_key(url: str, model: str) -> bool:
    import requests

    try:
        reply = requests.post(f"{url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1}, timeout=30)
    except requests.RequestException:
        return False
    return reply.status_code == 401


def warm_up(url: str, model: str, key: str | None, requests_n: int, input_words: int, output_len: int) -> float:
    """A burst like the benchmark's, so first-use work (lazy kernels, allocator growth) is out of the numbers."""
    import requests

    rng = random.Random(7)
    words = ["alpha", "bravo", "delta", "kilo", "lima", "oscar", "papa", "tango", "zulu", "sierra"]
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def one(_: int) -> int:
        prompt = " ".join(rng.choice(words) for _ in range(input_words))
        reply = requests.post(
            f"{url}/v1/completions",
            json={"model": model, "prompt": prompt, "max_tokens": output_len, "ignore_eos": True, "temperature": 0},
            headers=headers,
            timeout=300,
        )
        return reply.status_code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(64, requests_n)) as pool:
        codes = list(pool.map(one, range(requests_n)))
    bad = [c for c in codes if c != 200]
    if bad:
        raise Failed(f"warm-up: {len(bad)} of {len(codes)} requests failed (HTTP {sorted(set(bad))})")
    return time.monotonic() - started


# --------------------------------------------------------------------------- one run
@dataclass
class Run:
    """One server (bare or vllm-hpc) of one configuration, with what was measured."""

    config: str
    kind: str  # "bare" or "vllm-hpc"
    gpus: str
    tp: int
    pp: int
    dir: Path
    procs: list[Proc] = field(default_factory=list)
    url: str | None = None
    key: str | None = None
    key_source: Callable[[], str | None] | None = None
    t0: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.config}/{self.kind}"

    def cache_env(self) -> dict[str, str]:
        cache = self.dir / "cache"
        for sub in ("vllm", "triton", "inductor"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        return {"VLLM_CACHE_ROOT": str(cache / "vllm"), "TRITON_CACHE_DIR": str(cache / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise Failed(f"{proc.name} exited with code {proc.popen.returncode} before ready; log {proc.log_path}:\n{proc.tail()}")

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the run's first process start to the first one-token completion."""
        deadline = self.t0 + timeout
        seen = "nothing yet"
        last_report = time.monotonic()
        while time.monotonic() < deadline:
            self.check_alive()
            if self.key is None and self.key_source is not None:
                self.key = self.key_source()
            if self.url and (self.key is not None or self.key_source is None):
                ok, seen = completion_ok(self.url, SERVED_NAME, self.key)
                if ok:
                    took = time.monotonic() - self.t0
                    self.result["ready_s"] = round(took, 2)
                    log(f"{self.label}: ready after {took:.1f}s")
                    return took
            else:
                seen = "no API key file yet"
            if time.monotonic() - last_report > 30:
                log(f"{self.label}: waiting for ready ({time.monotonic() - self.t0:.0f}s, last seen: {seen})")
                last_report = time.monotonic()
            time.sleep(READY_POLL_S)
        raise Failed(f"not ready after {timeout:.0f}s (last seen: {seen}); logs: {', '.join(str(p.log_path) for p in self.procs)}")


# --------------------------------------------------------------------------- the test
class Acceptance:
    def __init__(self, args: argparse.Namespace, gpu_names: list[str]) -> None:
        self.args = args
        self.gpu_names = gpu_names
        self.workdir: Path = args.workdir.resolve()
        self.model: str = str(args.model)
        self.python = args.python
        self.runs: list[Run] = []
        self.failure_test: dict[str, Any] | None = None
        self.errors: list[str] = []
        self.netns_ready = False
        self.base = self._base_env()
        if args.installed:
            found = shutil.which("vllm-hpc")
            if not found:
                raise SystemExit("--installed: no vllm-hpc on PATH")
            self.hpc_cmd = [found]
        else:
            self.hpc_cmd = [self.python, "-m", "vllm_hpc"]
        ray = shutil.which("ray") or (str(Path(self.python).parent / "ray") if (Path(self.python).parent / "ray").exists() else None)
        self.ray_cmd = [ray] if ray else [self.python, "-m", "ray.scripts.scripts"]

    # -- environment -----------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
        for key, value in SAFE_DEFAULTS.items():
            env.setdefault(key, value)
        if importlib.util.find_spec("flashinfer") is None:
            env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        if not self.args.installed:
            env["PYTHONPATH"] = os.pathsep.join([str(REPO / "entrypoint"), *filter(None, [env.get("PYTHONPATH")])])
        env.update(dict(kv.split("=", 1) for kv in self.args.env))
        return env

    def server_flags(self) -> list[str]:
        flags = ["--max-model-len", str(self.args.max_model_len)]
        if self.args.gpu_memory_utilization:
            flags += ["--gpu-memory-utilization", str(self.args.gpu_memory_utilization)]
        return flags

    def new_run(self, config: str, kind: str, gpus: str, tp: int, pp: int) -> Run:
        directory = self.workdir / "runs" / f"{config}-{kind}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        run = Run(config, kind, gpus, tp, pp, directory)
        run.result.update({"config": config, "kind": kind, "gpus": gpus, "tp": tp, "pp": pp, "dir": str(directory)})
        self.runs.append(run)
        return run

    # -- bare vLLM ---------------------------------------------------------------
    def start_bare(self, run: Run, host: str, port: int, extra_env: dict[str, str] | None = None, wrap: list[str] | None = None, ray: bool = False) -> None:
        run.key = f"bare-{random.getrandbits(64):016x}"
        env = {**self.base, **run.cache_env(), "VLLM_API_KEY": run.key, "CUDA_VISIBLE_DEVICES": run.gpus, **(extra_env or {})}
        argv = [
            self.python, "-m", SERVER_MODULE, "--model", self.model, "--served-model-name", SERVED_NAME,
            "--host", host, "--port", str(port), "--tensor-parallel-size", str(run.tp), "--pipeline-parallel-size", str(run.pp),
        ]  # fmt: skip
        if ray:
            argv += ["--distributed-executor-backend", "ray"]
        argv += self.server_flags()
        if not run.t0:
            run.t0 = time.monotonic()
        run.procs.append(start(f"{run.label} server", (wrap or []) + argv, env, run.dir / "server.log"))
        run.url = f"http://{host}:{port}"

    # -- vllm-hpc ------------------------------------------------------------------
    def hpc_env(self, run: Run, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**self.base, **run.cache_env(), "VLLM_HPC_HOME": str(home), "CUDA_VISIBLE_DEVICES": run.gpus, **(extra or {})}
        if self.args.server_module:
            env["VLLM_HPC_SERVER_MODULE"] = self.args.server_module
        return env

    def hpc_plan(self, args: list[str], env: dict[str, str], wrap: list[str] | None = None) -> dict[str, Any]:
        out = subprocess.run((wrap or []) + self.hpc_cmd + ["plan", *args, "--json"], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise Failed(f"vllm-hpc plan failed ({out.returncode}): {out.stderr.strip()[-800:]}")
        return json.loads(out.stdout)

    @staticmethod
    def key_from_home(home: Path) -> Callable[[], str | None]:
        def read() -> str | None:
            found = glob.glob(str(home / "jobs" / "*" / "api-key"))
            if not found:
                return None
            text = Path(found[0]).read_text().strip()
            return text or None

        return read

    def start_hpc_single(self, run: Run, port: int) -> None:
        home = run.dir / "home"
        env = self.hpc_env(run, home)
        args = ["--model", self.model, "--served-model-name", SERVED_NAME, "--port", str(port), *self.server_flags()]
        plan = self.hpc_plan(args, env)
        if (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) != (run.tp, run.pp):
            raise Failed(f"vllm-hpc planned TP {plan['tensor_parallel_size']} x PP {plan['pipeline_parallel_size']}, expected {run.tp} x {run.pp}")
        reach = plan["node_ip"] if plan["host"] in ("0.0.0.0", "::") else plan["host"]
        run.url = f"http://{reach}:{plan['port']}"
        run.result["plan"] = {k: plan[k] for k in ("role", "interface", "node_ip", "host", "port", "tensor_parallel_size", "pipeline_parallel_size")}
        run.key_source = self.key_from_home(home)
        run.t0 = time.monotonic()
        run.procs.append(start(f"{run.label} vllm-hpc", self.hpc_cmd + ["serve", *args], env, run.dir / "vllm-hpc.log", watch_lines=True))

    def hpc_extras(self, run: Run, home: Path) -> None:
        """What vllm-hpc itself reported: its own time to ready and the endpoint file."""
        endpoints = glob.glob(str(home / "jobs" / "*" / "endpoint.json"))
        deadline = time.monotonic() + 15
        while not endpoints and time.monotonic() < deadline:
            time.sleep(0.5)
            endpoints = glob.glob(str(home / "jobs" / "*" / "endpoint.json"))
        if endpoints:
            endpoint = json.loads(Path(endpoints[0]).read_text())
            run.result["hpc_reported_ready_s"] = endpoint.get("seconds_to_ready")
            run.result["endpoint_url"] = endpoint.get("url")
            # What NCCL chose, as vllm-hpc read it from NCCL's own log at ready.
            run.result["fabric"] = (endpoint.get("fabric") or {}).get("summary")
            run.result["fabric_warning"] = (endpoint.get("fabric") or {}).get("warning")
        else:
            run.result["hpc_reported_ready_s"] = None
            self.errors.append(f"{run.label}: no endpoint.json written")
        run.result["rejects_missing_key"] = unauthorized_without_key(run.url or "", SERVED_NAME)

    # -- measuring -------------------------------------------------------------------
    def serve_checks(self, run: Run) -> None:
        run.result["chat"] = chat_once(run.url or "", SERVED_NAME, run.key)
        log(f"{run.label}: chat completion ok in {run.result['chat']['seconds']:.2f}s")

    def bench(self, run: Run) -> None:
        if self.args.no_bench:
            return
        a = self.args
        warm = warm_up(run.url or "", SERVED_NAME, run.key, a.warmup_prompts, a.input_len // 2, a.output_len)
        run.result["warmup_s"] = round(warm, 2)
        result_dir = run.dir / "bench"
        result_dir.mkdir(exist_ok=True)
        argv = [
            self.python, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
            "--backend", "openai", "--base-url", run.url or "", "--endpoint", "/v1/completions",
            "--model", SERVED_NAME, "--tokenizer", self.model,
            "--dataset-name", "random", "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len),
            "--num-prompts", str(a.prompts), "--max-concurrency", str(a.concurrency), "--ignore-eos", "--seed", "0",
            "--save-result", "--result-dir", str(result_dir), "--result-filename", "bench.json",
        ]  # fmt: skip
        env = dict(self.base, OPENAI_API_KEY=run.key or "EMPTY")
        started = time.monotonic()
        log(f"{run.label}: vllm bench serve, {a.prompts} prompts, {a.input_len} in / {a.output_len} out, concurrency {a.concurrency}")
        with open(run.dir / "bench.log", "wb") as handle:
            done = subprocess.run(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=a.bench_timeout)
        if done.returncode != 0:
            raise Failed(f"vllm bench serve exited {done.returncode}; see {run.dir / 'bench.log'}:\n{Path(run.dir / 'bench.log').read_text()[-1500:]}")
        data = json.loads((result_dir / "bench.json").read_text())
        bench = {
            "seconds": round(time.monotonic() - started, 1),
            "completed": data.get("completed"),
            "failed": data.get("failed", a.prompts - (data.get("completed") or 0)),
            "duration_s": data.get("duration"),
            "request_throughput": data.get("request_throughput"),
            "output_throughput": data.get("output_throughput"),
            "total_token_throughput": data.get("total_token_throughput"),
            "mean_ttft_ms": data.get("mean_ttft_ms"),
            "median_ttft_ms": data.get("median_ttft_ms"),
            "p99_ttft_ms": data.get("p99_ttft_ms"),
            "mean_tpot_ms": data.get("mean_tpot_ms"),
            "median_tpot_ms": data.get("median_tpot_ms"),
            "mean_itl_ms": data.get("mean_itl_ms"),
        }
        run.result["bench"] = bench
        if bench["completed"] != a.prompts:
            raise Failed(f"bench completed {bench['completed']} of {a.prompts} requests")
        log(
            f"{run.label}: {bench['request_throughput']:.2f} req/s, {bench['output_throughput']:.0f} output tok/s, "
            f"TTFT {bench['mean_ttft_ms']:.1f} ms, TPOT {bench['mean_tpot_ms']:.2f} ms"
        )

    def finish(self, run: Run, stop_timeout: float = 60.0) -> None:
        for proc in reversed(run.procs):
            if proc.alive():
                code = stop(proc, stop_timeout)
                run.result.setdefault("stop_codes", {})[proc.name] = code

    def guarded(self, run: Run, steps: Callable[[], None]) -> None:
        try:
            steps()
            run.result["ok"] = True
        except (Failed, subprocess.SubprocessError, OSError, ValueError, KeyError) as err:
            run.result["ok"] = False
            run.result["error"] = f"{err}" if isinstance(err, Failed) else f"{type(err).__name__}: {err}"
            self.errors.append(f"{run.label}: {str(err).splitlines()[0]}")
            log(f"{run.label}: FAILED: {err}")
        finally:
            self.finish(run)
            self.save()

    # -- configurations ------------------------------------------------------------------
    def config_single(self, gpus: int) -> None:
        first, second = ("1", "0") if self.args.swap_single_gpus else ("0", "1")
        bare = self.new_run("single", "bare", first, 1, 1)
        hpc = self.new_run("single", "vllm-hpc", second if gpus >= 2 else "0", 1, 1)
        if gpus >= 2 and not self.args.sequential:
            log(f"single: bare vLLM on GPU {bare.gpus} and vllm-hpc on GPU {hpc.gpus}, started together")
            try:
                self.start_hpc_single(hpc, free_port())
                self.start_bare(bare, "127.0.0.1", free_port())
                bare.result["started_together"] = hpc.result["started_together"] = True
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    futures = {pool.submit(r.wait_ready, self.args.ready_timeout): r for r in (bare, hpc)}
                    for future, r in futures.items():
                        try:
                            future.result()
                        except Failed as err:
                            r.result["ok"], r.result["error"] = False, str(err)
                for r in (bare, hpc):
                    if r.result.get("ok") is False:
                        continue
                    self.guarded_steps(r)
            finally:
                for r in (bare, hpc):
                    if r.result.get("ok") is False and r.result.get("error"):
                        self.errors.append(f"{r.label}: {r.result['error'].splitlines()[0]}")
                    self.finish(r)
                self.save()
                wait_gpus_free()
            return
        for r in (bare, hpc):
            self.guarded(r, lambda r=r: self.single_steps(r))
            wait_gpus_free()

    def guarded_steps(self, run: Run) -> None:
        try:
            self.serve_checks(run)
            if run.kind == "vllm-hpc":
                self.hpc_extras(run, run.dir / "home")
            self.bench(run)
            run.result["ok"] = True
        except Failed as err:
            run.result["ok"], run.result["error"] = False, str(err)
            log(f"{run.label}: FAILED: {err}")

    def single_steps(self, run: Run) -> None:
        if run.kind == "bare":
            self.start_bare(run, "127.0.0.1", free_port())
        else:
            self.start_hpc_single(run, free_port())
        run.wait_ready(self.args.ready_timeout)
        self.serve_checks(run)
        if run.kind == "vllm-hpc":
            self.hpc_extras(run, run.dir / "home")
        self.bench(run)

    def config_tp2(self) -> None:
        order = ["bare", "vllm-hpc"] if not self.args.hpc_first_tp2 else ["vllm-hpc", "bare"]
        for kind in order:
            run = self.new_run("tp2", kind, "0,1", 2, 1)
            self.guarded(run, lambda run=run: self.single_steps(run))
            wait_gpus_free()

    # -- configuration C -----------------------------------------------------------------
    def ns(self, i: int) -> str:
        return f"vhpc-n{i}"

    def host(self, i: int) -> str:
        return f"gpu-n{i}"

    def ip(self, i: int) -> str:
        return f"{self.args.subnet}.{i + 1}"

    def in_node(self, i: int) -> list[str]:
        """Run in node i's network namespace, with its own hostname (UTS namespace)."""
        sethost = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"
        return ["ip", "netns", "exec", self.ns(i), "unshare", "--uts", self.python, "-c", sethost, self.host(i)]

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise Failed(f"{shlex.join(argv)} failed: {done.stderr.strip()}")
        return done

    def netns_up(self) -> None:
        self.netns_down(quiet=True)
        bridge = "vhpcbr0"
        self.sh("ip", "link", "add", bridge, "type", "bridge")
        self.sh("ip", "addr", "add", f"{self.args.subnet}.254/24", "dev", bridge)
        self.sh("ip", "link", "set", bridge, "up")
        for i in range(2):
            ns, outer, inner = self.ns(i), f"vhpc{i}h", f"vhpc{i}n"
            self.sh("ip", "netns", "add", ns)
            self.sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self.sh("ip", "link", "set", inner, "netns", ns)
            self.sh("ip", "-n", ns, "link", "set", inner, "name", "ib0")
            self.sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "ib0")
            self.sh("ip", "-n", ns, "link", "set", "ib0", "up")
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.sh("ip", "link", "set", outer, "master", bridge)
            self.sh("ip", "link", "set", outer, "up")
        for i in range(2):
            ping = self.sh("ip", "netns", "exec", self.ns(i), "ping", "-c", "1", "-W", "2", self.ip(1 - i), check=False) if shutil.which("ping") else None
            if ping is not None and ping.returncode != 0:
                log(f"warning: {self.host(i)} cannot ping {self.ip(1 - i)}: {ping.stdout.strip()[-200:]}")
        self.netns_ready = True
        log(f"two nodes: {self.host(0)} ({self.ip(0)}) and {self.host(1)} ({self.ip(1)}), ib0 on bridge {bridge}")

    def kill_node(self, i: int) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.ns(i)], capture_output=True, text=True, timeout=30)
        pids = [int(p) for p in done.stdout.split() if p.strip().isdigit()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def netns_down(self, quiet: bool = False) -> None:
        for i in range(2):
            if subprocess.run(["ip", "netns", "pids", self.ns(i)], capture_output=True, timeout=30).returncode == 0:
                self.kill_node(i)
        time.sleep(0.5)
        for i in range(2):
            subprocess.run(["ip", "netns", "del", self.ns(i)], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", f"vhpc{i}h"], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", "vhpcbr0"], capture_output=True, timeout=30)
        self.netns_ready = False

    def multinode_env(self, i: int, job: str, home: Path) -> dict[str, str]:
        return {
            "SLURM_JOB_ID": job,
            "SLURM_NODEID": str(i),
            "SLURM_PROCID": str(i),
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_JOB_NODELIST": f"{self.host(0)[:-1]}[0-1]",
            "SLURM_GPUS_ON_NODE": "1",
            # As srun gives them inside the job's step (vllm-hpc plans from the step's nodes).
            "SLURM_STEP_ID": "0",
            "SLURM_STEP_NODELIST": f"{self.host(0)[:-1]}[0-1]",
            "SLURM_STEP_NUM_NODES": "2",
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
            "SLURMD_NODENAME": self.host(i),
            "VLLM_HPC_HOME": str(home),
            "VLLM_HPC_RAY_TMPDIR": f"/tmp/vh{job[-4:]}n{i}",
        }

    def config_multinode(self) -> None:
        for tool in ("ip", "unshare"):
            if not shutil.which(tool):
                self.errors.append(f"multinode: not run, `{tool}` is missing")
                log(f"multinode: skipped, `{tool}` is missing")
                return
        if os.geteuid() != 0:
            self.errors.append("multinode: not run, network namespaces need root")
            log("multinode: skipped, network namespaces need root")
            return
        self.netns_up()
        try:
            order = ["vllm-hpc", "bare"] if not self.args.bare_first_multinode else ["bare", "vllm-hpc"]
            for kind in order:
                if kind == "bare" and self.args.no_bare_multinode:
                    continue
                run = self.new_run("multinode", kind, "0|1", 1, 2)
                for i in range(2):  # the failure test leaves the worker's link down
                    self.sh("ip", "link", "set", f"vhpc{i}h", "up")
                if kind == "bare":
                    self.guarded(run, lambda run=run: self.multinode_bare_steps(run))
                else:
                    self.guarded(run, lambda run=run: self.multinode_hpc_steps(run))
                for i in range(2):
                    self.kill_node(i)
                wait_gpus_free()
        finally:
            self.netns_down()

    def multinode_bare_steps(self, run: Run) -> None:
        gcs = 6379
        run.t0 = time.monotonic()
        for i in range(2):
            env = dict(
                self.base,
                **run.cache_env(),
                CUDA_VISIBLE_DEVICES=str(i),
                VLLM_HOST_IP=self.ip(i),
                NCCL_SOCKET_IFNAME="ib0",
                GLOO_SOCKET_IFNAME="ib0",
                VLLM_ALLREDUCE_USE_SYMM_MEM="0",
            )
            head = ["--head", "--port", str(gcs)] if i == 0 else ["--address", f"{self.ip(0)}:{gcs}"]
            argv = self.in_node(i) + self.ray_cmd + ["start", *head, "--node-ip-address", self.ip(i), "--num-gpus", "1",
                                                     "--temp-dir", f"/tmp/vhb-n{i}", "--disable-usage-stats"] + (["--include-dashboard=false"] if i == 0 else [])  # fmt: skip
            with open(run.dir / f"ray-{self.host(i)}.log", "wb") as handle:
                done = subprocess.run(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=120)
            if done.returncode != 0:
                raise Failed(f"ray start on {self.host(i)} exited {done.returncode}; see {run.dir}/ray-{self.host(i)}.log")
        run.result["ray_cluster_s"] = round(time.monotonic() - run.t0, 2)
        log(f"{run.label}: Ray head and worker started after {run.result['ray_cluster_s']:.1f}s")
        extra = {"RAY_ADDRESS": f"{self.ip(0)}:{gcs}", "VLLM_HOST_IP": self.ip(0), "NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0",
                 "VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}  # fmt: skip
        run.gpus = "0"
        self.start_bare(run, self.ip(0), 8000, extra_env=extra, wrap=self.in_node(0), ray=True)
        run.wait_ready(self.args.ready_timeout)
        self.serve_checks(run)
        self.bench(run)

    def multinode_hpc_steps(self, run: Run) -> None:
        job = str(self.args.job_id)
        home = run.dir / "home"
        args = ["--model", self.model, "--served-model-name", SERVED_NAME, *self.server_flags()]
        envs = []
        for i in range(2):
            run.gpus = str(i)
            envs.append(self.hpc_env(run, home, self.multinode_env(i, job, home)))
        run.gpus = "0|1"
        plan = self.hpc_plan(args, envs[0], wrap=self.in_node(0))
        if (plan["role"], plan["tensor_parallel_size"], plan["pipeline_parallel_size"], plan["interface"]) != ("leader", 1, 2, "ib0"):
            raise Failed(f"leader plan is {plan['role']} TP {plan['tensor_parallel_size']} x PP {plan['pipeline_parallel_size']} on {plan['interface']}")
        run.result["plan"] = {k: plan[k] for k in ("role", "interface", "node_ip", "host", "port", "nodes", "tensor_parallel_size", "pipeline_parallel_size")}
        reach = plan["node_ip"] if plan["host"] in ("0.0.0.0", "::") else plan["host"]
        run.url = f"http://{reach}:{plan['port']}"
        run.key_source = self.key_from_home(home)
        run.t0 = time.monotonic()
        leader = start(f"{run.label} leader", self.in_node(0) + self.hpc_cmd + ["serve", *args], envs[0], run.dir / "leader.log", watch_lines=True)
        worker = start(f"{run.label} worker", self.in_node(1) + self.hpc_cmd + ["serve", *args], envs[1], run.dir / "worker.log", watch_lines=True)
        run.procs += [leader, worker]
        run.wait_ready(self.args.ready_timeout)
        joined = [t for t, line in leader.lines if "nodes to join the Ray cluster: done" in line]
        if joined:
            run.result["ray_cluster_s"] = round(joined[0] - run.t0, 2)
        self.serve_checks(run)
        self.hpc_extras(run, home)
        # The start-up timeline as each node logged it (seconds since its process start).
        run.result["timeline"] = [line for proc in (leader, worker) for _, line in proc.lines
                                  if any(w in line for w in ("started ray", "Ray head", "publish its fabric", "to join the Ray", "READY", "fabric:"))]
        self.bench(run)
        run.result["doctor_fabric"] = self.doctor_fabric(run, envs)
        if not self.args.no_failure_test:
            self.failure_test = self.node_failure(run, leader, worker)

    def doctor_fabric(self, run: Run, envs: list[dict[str, str]]) -> dict[str, Any] | str:
        """`vllm-hpc doctor --fabric` on both namespace nodes at once (NCCL, one GPU each)."""
        procs = [subprocess.Popen(self.in_node(i) + self.hpc_cmd + ["doctor", "--fabric", "--interface", "ib0", "--json",
                                                                   "--fabric-timeout", "60"],
                                  env=envs[i], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        (run.dir / "doctor-fabric.log").write_text("\n".join(o + e for o, e in outs))
        if any(p.returncode for p in procs):
            self.errors.append(f"{run.label}: doctor --fabric failed, see {run.dir}/doctor-fabric.log")
            return f"failed: {outs[0][1].strip().splitlines()[-1:] or outs[1][1].strip().splitlines()[-1:]}"
        result = json.loads(outs[0][0])
        log(f"{run.label}: doctor --fabric {result['backend']}: " + ", ".join(
            f"{row['bytes'] >> 20} MiB {row['bus_gbs']} GB/s" for row in result["allreduce"]) + f"; pairs {result['pairs']}")
        return result

    def node_failure(self, run: Run, leader: Proc, worker: Proc) -> dict[str, Any]:
        """Cut the worker node off and kill everything in it; the leader must notice and exit non-zero naming it."""
        leader.remember_tree()
        mark = len(leader.lines)
        log(f"failure test: cutting {self.host(1)} off (link down) and killing every process in its namespace")
        t_kill = time.monotonic()
        subprocess.run(["ip", "link", "set", "vhpc1h", "down"], capture_output=True, timeout=30)
        killed = self.kill_node(1)
        deadline = t_kill + self.args.failure_timeout
        while leader.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        t_exit = time.monotonic()
        code = leader.popen.poll()
        time.sleep(0.5)  # the last lines
        after = leader.lines[mark:]
        node = self.host(1)
        own = [(t, line) for t, line in after if line.startswith("[vllm-hpc") or line.startswith("vllm-hpc:")]
        naming = [(t, line) for t, line in own if node in line]
        result = {
            "node": node,
            "processes_killed": len(killed),
            "leader_exit_code": code,
            "react_s": round(own[0][0] - t_kill, 2) if own else None,
            "reaction": own[0][1] if own else None,
            "message_s": round(naming[0][0] - t_kill, 2) if naming else None,
            "message": naming[0][1] if naming else None,
            "exit_s": round(t_exit - t_kill, 2) if code is not None else None,
            "final_error": next((line for _, line in reversed(after) if line.startswith("vllm-hpc:")), None),
            "leader_lines_after_kill": [line[:400] for _, line in after][-20:],
        }
        result["ok"] = bool(code not in (None, 0) and naming)
        if code is None:
            stop(leader, 30)
        log(
            f"failure test: leader reacted after {result['react_s']}s, named {node} after {result['message_s']}s, "
            f"exited with code {code} after {result['exit_s']}s"
            + ("" if result["ok"] else " -- FAILED")
        )
        if not result["ok"]:
            self.errors.append(f"failure test: leader exit code {code}, message naming the node: {bool(naming)}")
        return result

    # -- driving ---------------------------------------------------------------------
    def save(self) -> None:
        data = {
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "gpus": self.gpu_names,
            "versions": self.versions,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "runs": [r.result for r in self.runs],
            "failure_test": self.failure_test,
            "errors": self.errors,
        }
        path = self.args.json or (self.workdir / "results.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
        self.saved = data

    def run(self, gpus: int) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.versions = {
            "vllm": module_version("vllm", self.python),
            "torch": module_version("torch", self.python),
            "ray": module_version("ray", self.python),
        }
        log(f"GPUs: {', '.join(self.gpu_names) or 'none'}; versions: {self.versions}")
        # With a stand-in server (--server-module, with --no-bench and only vllm-hpc runs)
        # the cluster's formation and the fabric are measured without vLLM.
        if not self.versions["vllm"] and not self.args.server_module:
            log("vLLM is not importable by this Python: nothing to test")
            return SKIP_EXIT
        wanted = [c.strip() for c in self.args.configs.split(",") if c.strip()]
        started = time.monotonic()
        try:
            for config in wanted:
                begun = time.monotonic()
                if config == "single":
                    self.config_single(gpus)
                elif config == "tp2":
                    if gpus < 2:
                        log("tp2: skipped, needs 2 GPUs")
                        continue
                    self.config_tp2()
                elif config == "multinode":
                    if gpus < 2:
                        log("multinode: skipped, needs 2 GPUs")
                        continue
                    self.config_multinode()
                else:
                    raise SystemExit(f"unknown configuration {config!r}")
                log(f"{config}: done in {time.monotonic() - begun:.0f}s")
        finally:
            if self.netns_ready:
                self.netns_down()
            for r in self.runs:
                self.finish(r, 20)
            self.save()
        log(f"all done in {time.monotonic() - started:.0f}s; results in {self.args.json or self.workdir / 'results.json'}")
        print(render(self.saved, self.args.tolerance))
        return 1 if self.errors else 0


# --------------------------------------------------------------------------- report
def fmt(value: Any, spec: str) -> str:
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 1))
    return format(value, spec)


def pct(new: float | None, old: float | None) -> str:
    if new is None or old in (None, 0):
        return "-"
    return f"{100.0 * (new - old) / old:+.1f}%"


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def render(data: dict[str, Any], tolerance: float = 3.0) -> str:
    runs = data.get("runs", [])
    passes = sorted({r.get("pass", 1) for r in runs})
    gpus = data.get("gpus") or []
    lines = [
        f"GPUs: {', '.join(gpus) or '?'}; vLLM {(data.get('versions') or {}).get('vllm')}; {len(passes)} pass(es); "
        f"bench: {data['args'].get('prompts')} prompts, {data['args'].get('input_len')} in / {data['args'].get('output_len')} out, "
        f"concurrency {data['args'].get('concurrency')}",
        "",
        f"{'pass':<4} {'config':<10} {'kind':<9} {'GPUs':<5} {'TPxPP':<6} {'ready s':>8} {'req/s':>8} {'out tok/s':>10} {'TTFT ms':>8} {'TPOT ms':>8}  note",
    ]
    for r in runs:
        b = r.get("bench") or {}
        note = "ok" if r.get("ok") else f"FAILED: {(r.get('error') or '').splitlines()[0][:60]}" if r.get("error") else "incomplete"
        if r.get("kind") == "vllm-hpc" and r.get("hpc_reported_ready_s") is not None:
            note += f"; vllm-hpc says ready {r['hpc_reported_ready_s']}s"
        if r.get("started_together"):
            note += "; started together"
        lines.append(
            f"{r.get('pass', 1):<4} {r['config']:<10} {r['kind']:<9} {r['gpus']:<5} {str(r['tp']) + 'x' + str(r['pp']):<6} {fmt(r.get('ready_s'), '8.1f')} "
            f"{fmt(b.get('request_throughput'), '8.2f')} {fmt(b.get('output_throughput'), '10.0f')} {fmt(b.get('mean_ttft_ms'), '8.1f')} "
            f"{fmt(b.get('mean_tpot_ms'), '8.2f')}  {note}"
        )
    lines += ["", f"vllm-hpc against bare, means over passes (within {tolerance:g}% counts as equal; ready: lower is better, req/s: higher is better):"]
    for config in dict.fromkeys(r["config"] for r in runs):
        bare = [r for r in runs if r["config"] == config and r["kind"] == "bare" and r.get("ok")]
        hpc = [r for r in runs if r["config"] == config and r["kind"] == "vllm-hpc" and r.get("ok")]
        if not bare or not hpc:
            continue
        rb, rh = mean([r.get("ready_s") for r in bare]), mean([r.get("ready_s") for r in hpc])
        tb = mean([(r.get("bench") or {}).get("request_throughput") for r in bare])
        th = mean([(r.get("bench") or {}).get("request_throughput") for r in hpc])
        verdicts = []
        if rb and rh:
            verdicts.append("ready " + ("within" if (rh - rb) / rb * 100 <= tolerance else "OUTSIDE"))
        if tb and th:
            verdicts.append("req/s " + ("within" if (tb - th) / tb * 100 <= tolerance else "OUTSIDE"))
        per_pass = []
        for n in passes:
            b1 = [r for r in bare if r.get("pass", 1) == n]
            h1 = [r for r in hpc if r.get("pass", 1) == n]
            if b1 and h1:
                per_pass.append(
                    f"pass {n}: ready {pct(h1[0].get('ready_s'), b1[0].get('ready_s'))}, req/s "
                    f"{pct((h1[0].get('bench') or {}).get('request_throughput'), (b1[0].get('bench') or {}).get('request_throughput'))}"
                )
        lines.append(
            f"  {config:<10} n={len(bare)}/{len(hpc)}  ready {fmt(rb, '.1f')} -> {fmt(rh, '.1f')} s ({pct(rh, rb)})   "
            f"req/s {fmt(tb, '.2f')} -> {fmt(th, '.2f')} ({pct(th, tb)})   {', '.join(verdicts)}"
        )
        if len(per_pass) > 1:
            lines.append(f"  {'':<10} {'; '.join(per_pass)}")
    ft = data.get("failure_test")
    if ft:
        lines += [
            "",
            f"node failure ({ft['node']} cut off, {ft['processes_killed']} processes killed): leader reacted after {ft.get('react_s')} s, "
            f"named the node after {ft.get('message_s')} s, exited with code {ft['leader_exit_code']} after {ft['exit_s']} s "
            f"-> {'ok' if ft['ok'] else 'FAILED'}",
        ]
        for key in ("reaction", "final_error"):
            if ft.get(key):
                lines.append(f"  {key}: {ft[key][:220]}")
    if data.get("errors"):
        lines += ["", "problems:"] + [f"  {e[:200]}" for e in data["errors"]]
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict[str, Any]:
    merged: dict[str, Any] | None = None
    for number, path in enumerate(paths, 1):
        data = json.loads(path.read_text())
        for run in data.get("runs", []):
            run["pass"] = number
        if merged is None:
            merged = data
            continue
        merged["runs"] += data.get("runs", [])
        merged["errors"] += data.get("errors", [])
        merged["failure_test"] = data.get("failure_test") or merged.get("failure_test")
    if merged is None:
        raise SystemExit("no JSON files given")
    return merged


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model directory [default: <workdir>/model, made with --make-model]")
    parser.add_argument("--make-model", action="store_true", help="generate the 1 B random-weight Llama (tests/gpu/make_model.py) first")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vllm-hpc-acceptance"), help="runs, caches and logs [%(default)s]")
    parser.add_argument("--json", type=Path, help="results file [<workdir>/results.json]")
    parser.add_argument("--configs", default="single,tp2,multinode", help="which configurations, comma-separated [%(default)s]")
    parser.add_argument("--quick", action="store_true", help="fewer prompts (128) and a shorter warm-up")
    parser.add_argument("--prompts", type=int, help="benchmark prompts [400; 128 with --quick]")
    parser.add_argument("--concurrency", type=int, default=64, help="benchmark maximum concurrency [%(default)s]")
    parser.add_argument("--input-len", type=int, default=512, help="[%(default)s]")
    parser.add_argument("--output-len", type=int, default=128, help="[%(default)s]")
    parser.add_argument("--warmup-prompts", type=int, help="requests in the warm-up burst [64; 32 with --quick]")
    parser.add_argument("--max-model-len", type=int, default=2048, help="[%(default)s]")
    parser.add_argument("--gpu-memory-utilization", type=float, help="passed to both kinds of server")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds for a server to answer [%(default)s]")
    parser.add_argument("--bench-timeout", type=float, default=600.0, help="[%(default)s]")
    parser.add_argument("--failure-timeout", type=float, default=180.0, help="seconds for the leader to exit after the node dies [%(default)s]")
    parser.add_argument("--sequential", action="store_true", help="single: start bare and vllm-hpc one after the other, not together")
    parser.add_argument("--swap-single-gpus", action="store_true", help="single: bare on GPU 1 and vllm-hpc on GPU 0")
    parser.add_argument("--hpc-first-tp2", action="store_true", help="tp2: start with vllm-hpc (default: bare first)")
    parser.add_argument("--bare-first-multinode", action="store_true", help="multinode: start with bare (default: vllm-hpc first)")
    parser.add_argument("--no-bare-multinode", action="store_true", help="multinode: only vllm-hpc")
    parser.add_argument("--no-failure-test", action="store_true")
    parser.add_argument("--no-bench", action="store_true", help="only time to ready and one chat completion")
    parser.add_argument("--subnet", default="10.231.0", help="first three octets of the emulated fabric [%(default)s]")
    parser.add_argument("--job-id", type=int, default=424242, help="SLURM_JOB_ID of the emulated multi-node job [%(default)s]")
    parser.add_argument("--installed", action="store_true", help="use vllm-hpc from PATH instead of this checkout's entrypoint/")
    parser.add_argument("--python", default=sys.executable, help="Python with vLLM [this one]")
    parser.add_argument("--server-module", help="VLLM_HPC_SERVER_MODULE for vllm-hpc runs (a stand-in server, for testing this script)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every program")
    parser.add_argument("--pretend-gpus", type=int, help=argparse.SUPPRESS)  # testing this script without GPUs
    parser.add_argument("--tolerance", type=float, default=3.0, help="percent counted as equal in the comparison [%(default)s]")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON", help="print the table from saved results and exit")
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (128 if args.quick else 400)
    args.warmup_prompts = args.warmup_prompts or (32 if args.quick else 64)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(render(merge(args.report), args.tolerance))
        return 0
    gpus, names = count_gpus()
    if args.pretend_gpus is not None:
        gpus = args.pretend_gpus
    if gpus == 0:
        print("acceptance: skipped: no NVIDIA GPU here (nvidia-smi lists none); run this on a GPU node")
        return SKIP_EXIT
    if args.model is None:
        args.model = args.workdir.resolve() / "model"
    if args.make_model:
        subprocess.run([args.python, str(HERE / "make_model.py"), str(args.model)], check=True)
    if not (Path(args.model) / "config.json").is_file():
        print(f"acceptance: no model at {args.model} (give --model DIR or --make-model)", file=sys.stderr)
        return 2
    test = Acceptance(args, names)
    return test.run(gpus)


if __name__ == "__main__":
    sys.exit(main())
