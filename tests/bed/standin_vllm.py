"""A stand-in for vLLM's OpenAI server on the multi-node Ray path, for the test bed.

A CPU build of vLLM cannot use Ray ("current platform cpu does not support ray"), so
on machines without GPUs the multi-node path runs this program instead:

    PYTHONPATH=tests/bed python -m standin_vllm --model M --served-model-name N \\
        --host H --port P --tensor-parallel-size T --pipeline-parallel-size PP \\
        --distributed-executor-backend ray [other vLLM options, ignored]

It does what vLLM's Ray executor does to the cluster, and no inference:

- connects to the Ray cluster named by RAY_ADDRESS (token authentication through
  RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH, as for any Ray driver);
- creates a placement group of T*PP bundles {"GPU": 1}, the first one pinned to this
  node through the resource ``node:<VLLM_HOST_IP>``, strategy PACK, and waits for it
  (bounded, like vLLM's 1800 s; VLLM_HPC_STANDIN_PG_TIMEOUT overrides);
- starts one actor per bundle (num_gpus=1) that reports its node IP, hostname, pid and
  its VLLM_HOST_IP / NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME / NCCL_DEBUG_FILE;
- serves HTTP like vLLM's server: /health, /ping, /v1/models, /v1/chat/completions,
  /v1/completions (fixed "stand-in reply" text, usage counted in whitespace-separated
  words), plus GET /standin/ranks with the actors' reports. /v1 routes require
  ``Authorization: Bearer <key>`` when VLLM_API_KEY (or --api-key) is set;
- prints uvicorn's "Application startup complete." when ready;
- checks its actors every second and exits 1 naming the rank and node when one dies;
  exits 0 on SIGTERM or SIGINT.

Every log line starts with "(vLLM stand-in)".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PG_TIMEOUT_S = 1800.0  # vLLM's PG_WAIT_TIMEOUT
ACTOR_START_TIMEOUT_S = 600.0
PING_TIMEOUT_S = 30.0
REPLY_WORDS = "stand-in reply from the multi-node test bed".split()
REPORTED_ENV = ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "CUDA_VISIBLE_DEVICES", "NCCL_DEBUG_FILE")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class StandinError(Exception):
    """A failure the stand-in reports in one line before exiting non-zero."""


def log(message: str) -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"(vLLM stand-in) INFO {stamp} {message}", flush=True)


# ---------------------------------------------------------------- arguments


@dataclass(frozen=True)
class Options:
    model: str
    served_model_names: tuple[str, ...]
    host: str
    port: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    distributed_executor_backend: str | None
    api_key: str | None
    ignored: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def parse_args(argv: list[str], environ: dict[str, str]) -> Options:
    """vLLM's own spelling of the options that matter here; the rest is tolerated."""
    parser = argparse.ArgumentParser(prog="standin_vllm", allow_abbrev=False)
    parser.add_argument("--model", default="facebook/opt-125m")
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    parser.add_argument("--distributed-executor-backend", default=None)
    parser.add_argument("--api-key", default=None)
    args, ignored = parser.parse_known_args(argv)
    if args.tensor_parallel_size < 1 or args.pipeline_parallel_size < 1:
        parser.error("parallel sizes must be at least 1")
    return Options(
        model=args.model,
        served_model_names=tuple(args.served_model_name or [args.model]),
        # vLLM binds every interface when --host is not given.
        host=args.host or "",
        port=args.port,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        api_key=args.api_key or environ.get("VLLM_API_KEY") or None,
        ignored=tuple(ignored),
    )


def build_bundles(world_size: int, driver_ip: str) -> list[dict[str, float]]:
    """The placement group vLLM's Ray executor asks for."""
    bundles: list[dict[str, float]] = [{"GPU": 1.0} for _ in range(world_size)]
    bundles[0][f"node:{driver_ip}"] = 0.001
    return bundles


def guess_driver_ip(environ: dict[str, str]) -> str:
    """vLLM's get_ip(): VLLM_HOST_IP, else the source address of a default route."""
    if environ.get("VLLM_HOST_IP"):
        return environ["VLLM_HOST_IP"]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("8.8.8.8", 80))
            return sock.getsockname()[0]
    except OSError:
        return "127.0.0.1"


# ---------------------------------------------------------------- Ray side


class RankReporter:
    """One per placement-group bundle, where vLLM would run a GPU worker."""

    def report(self) -> dict[str, Any]:
        import ray

        return {
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "env": {name: os.environ.get(name) for name in REPORTED_ENV},
        }

    def ping(self) -> int:
        return os.getpid()


@dataclass
class Rank:
    rank: int
    bundle_index: int
    node_ip: str
    node_id: str
    hostname: str
    pid: int
    gpu_ids: list[str]
    env: dict[str, str | None]
    actor: Any = field(default=None, repr=False, compare=False)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["actor"]
        return data

    def where(self) -> str:
        return f"rank {self.rank} (node {self.node_ip}, host {self.hostname}, pid {self.pid})"


def wait_for_placement_group(ray: Any, pg: Any, timeout_s: float, stop: threading.Event) -> None:
    started = time.monotonic()
    ready_ref = pg.ready()
    next_report = 10.0
    while not stop.is_set():
        ready, _ = ray.wait([ready_ref], timeout=1.0)
        if ready:
            return
        elapsed = time.monotonic() - started
        if elapsed >= timeout_s:
            raise StandinError(
                f"Cannot provide a placement group of placement_group_specs={pg.bundle_specs} "
                f"within {timeout_s:.0f} seconds. See `ray status` and `ray list nodes`, and "
                "make sure VLLM_HOST_IP is the Ray node IP of this node."
            )
        if elapsed >= next_report:
            log(
                f"Waiting for creating a placement group of specs for {int(elapsed)} seconds "
                f"(limit {timeout_s:.0f}). specs={pg.bundle_specs}."
            )
            next_report *= 2
    raise StandinError("stopped while waiting for the placement group")


def start_ranks(ray: Any, opts: Options, driver_ip: str, pg_timeout_s: float,
                stop: threading.Event) -> tuple[Any, list[Rank]]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    node_id = ray.get_runtime_context().get_node_id()
    here = ray._private.state.available_resources_per_node().get(node_id, {})
    if here.get("GPU", 0) < 1:
        raise StandinError(
            f"Current node has no GPU available. current_node_resource={here}. "
            f"current_node_id={node_id} current_ip={driver_ip}"
        )
    bundles = build_bundles(opts.world_size, driver_ip)
    log(f"creating a placement group of {len(bundles)} bundles, strategy PACK: {bundles}")
    pg = ray.util.placement_group(bundles, strategy="PACK")
    wait_for_placement_group(ray, pg, pg_timeout_s, stop)
    log("placement group ready")

    reporter = ray.remote(num_cpus=0, num_gpus=1)(RankReporter)
    actors = [
        reporter.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg,
                placement_group_bundle_index=index,
                placement_group_capture_child_tasks=True,
            )
        ).remote()
        for index in range(len(bundles))
    ]
    pending = {actor.report.remote(): (index, actor) for index, actor in enumerate(actors)}
    reports: list[tuple[int, Any, dict[str, Any]]] = []
    deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
    while pending:
        if stop.is_set():
            raise StandinError("stopped while starting the rank actors")
        if time.monotonic() > deadline:
            missing = sorted(index for index, _ in pending.values())
            raise StandinError(f"rank actors of bundles {missing} did not start in "
                               f"{ACTOR_START_TIMEOUT_S:.0f} s")
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
        for ref in done:
            index, actor = pending.pop(ref)
            try:
                reports.append((index, actor, ray.get(ref)))
            except Exception as exc:
                raise StandinError(f"rank actor of bundle {index} failed: {exc}") from exc

    # vLLM orders its workers with the driver's node first, then by node IP.
    reports.sort(key=lambda r: (r[2]["node_ip"] != driver_ip, r[2]["node_ip"], r[0]))
    ranks = [
        Rank(rank=rank, bundle_index=index, actor=actor, **report)
        for rank, (index, actor, report) in enumerate(reports)
    ]
    return pg, ranks


def find_dead_rank(ray: Any, ranks: list[Rank]) -> tuple[Rank, str] | None:
    """The first rank whose actor does not answer a ping, with the reason."""
    refs = {rank.actor.ping.remote(): rank for rank in ranks}
    done, not_done = ray.wait(list(refs), num_returns=len(refs), timeout=PING_TIMEOUT_S)
    for ref in done:
        try:
            ray.get(ref)
        except Exception as exc:
            return refs[ref], f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not_done:
        return refs[not_done[0]], f"no answer to a ping in {PING_TIMEOUT_S:.0f} s"
    return None


# ---------------------------------------------------------------- HTTP side


def count_words(text: str) -> int:
    return len(text.split())


def build_reply(max_tokens: int | None) -> tuple[str, int, str]:
    """(text, completion_tokens, finish_reason) of the fixed reply."""
    words = REPLY_WORDS if max_tokens is None else REPLY_WORDS[: max(0, max_tokens)]
    finish = "stop" if len(words) == len(REPLY_WORDS) else "length"
    return " ".join(words), len(words), finish


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, opts: Options, ranks: list[Rank]) -> None:
        self.opts = opts
        self.ranks = ranks
        self.created = int(time.time())
        family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
        self.address_family = family
        super().__init__((opts.host, opts.port), StandinHandler)


class StandinHandler(BaseHTTPRequestHandler):
    server: StandinServer
    protocol_version = "HTTP/1.1"
    server_version = "vllm-standin"

    def log_message(self, format: str, *args: Any) -> None:
        log(f'{self.client_address[0]} "{self.requestline}" {args[1] if len(args) > 1 else ""}')

    # -- plumbing

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_empty(self, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_error_json(self, status: int, message: str, kind: str) -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "param": None,
                                          "code": status}})

    def authorized(self) -> bool:
        key = self.server.opts.api_key
        if not key or not self.path.startswith("/v1"):
            return True
        if self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        # vLLM's body and status for a missing or wrong key.
        self.send_json(401, {"error": "Unauthorized"})
        return False

    def read_body(self) -> bytes:
        # Read it whatever the route, so a kept-alive connection stays in step.
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def parse_json(self, raw: bytes) -> dict[str, Any] | None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            self.send_error_json(400, f"invalid JSON body: {exc}", "BadRequestError")
            return None
        if not isinstance(body, dict):
            self.send_error_json(400, "the request body must be a JSON object", "BadRequestError")
            return None
        model = body.get("model")
        if model is not None and model not in self.server.opts.served_model_names:
            self.send_error_json(404, f"The model `{model}` does not exist.", "NotFoundError")
            return None
        return body

    # -- routes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/ping"):
            self.send_empty()
        elif path == "/standin/ranks":
            opts = self.server.opts
            self.send_json(200, {
                "standin": True,
                "world_size": opts.world_size,
                "tensor_parallel_size": opts.tensor_parallel_size,
                "pipeline_parallel_size": opts.pipeline_parallel_size,
                "ranks": [rank.public() for rank in self.server.ranks],
            })
        elif not self.authorized():
            return
        elif path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": self.server.created,
                 "owned_by": "vllm", "root": self.server.opts.model, "parent": None,
                 "max_model_len": 2048}
                for name in self.server.opts.served_model_names
            ]})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self.read_body()
        if path == "/ping":
            self.send_empty()
            return
        if not self.authorized():
            return
        if path == "/v1/chat/completions":
            body = self.parse_json(raw)
            if body is not None:
                self.chat_completion(body)
        elif path == "/v1/completions":
            body = self.parse_json(raw)
            if body is not None:
                self.completion(body)
        else:
            self.send_json(404, {"detail": "Not Found"})

    def chat_completion(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self.send_error_json(400, "messages must be a non-empty list", "BadRequestError")
            return
        prompt_tokens = sum(count_words(message_text(m)) + 1 for m in messages if isinstance(m, dict))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        text, completion_tokens, finish = build_reply(limit)
        model = body.get("model") or self.server.opts.served_model_names[0]
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if body.get("stream"):
            base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]}]
            for i, word in enumerate(text.split()):
                chunks.append({**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + word},
                                                    "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({**base, "choices": [], "usage": usage})
            self.stream(chunks)
            return
        self.send_json(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        })

    def completion(self, body: dict[str, Any]) -> None:
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        if any(p is None for p in prompts):
            self.send_error_json(400, "prompt is required", "BadRequestError")
            return
        text, completion_tokens, finish = build_reply(body.get("max_tokens", 16))
        prompt_tokens = sum(len(p) if isinstance(p, list) else count_words(str(p)) for p in prompts)
        model = body.get("model") or self.server.opts.served_model_names[0]
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * len(prompts),
                 "total_tokens": prompt_tokens + completion_tokens * len(prompts)}
        if body.get("stream"):
            base = {"id": ident, "object": "text_completion", "created": created, "model": model}
            chunks = []
            for index in range(len(prompts)):
                for i, word in enumerate(text.split()):
                    chunks.append({**base, "choices": [{"index": index, "text": (" " if i else "") + word,
                                                        "logprobs": None, "finish_reason": None}]})
                chunks.append({**base, "choices": [{"index": index, "text": "", "logprobs": None,
                                                    "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({**base, "choices": [], "usage": usage})
            self.stream(chunks)
            return
        self.send_json(200, {
            "id": ident, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                        for index in range(len(prompts))],
            "usage": usage,
        })

    def stream(self, chunks: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


# ---------------------------------------------------------------- main


def run(opts: Options, environ: dict[str, str]) -> int:
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if opts.ignored:
        log(f"ignoring options it does not act on: {' '.join(opts.ignored)}")
    address = environ.get("RAY_ADDRESS")
    if not address:
        raise StandinError("RAY_ADDRESS is not set: the stand-in only runs on a Ray cluster")
    driver_ip = guess_driver_ip(environ)
    pg_timeout = float(environ.get("VLLM_HPC_STANDIN_PG_TIMEOUT") or PG_TIMEOUT_S)
    log(f"stand-in for vLLM, model {opts.model!r} served as {list(opts.served_model_names)}, "
        f"TP {opts.tensor_parallel_size} x PP {opts.pipeline_parallel_size}, "
        f"executor {opts.distributed_executor_backend}, driver IP {driver_ip}, Ray at {address}")

    import ray

    if __name__ != "__main__":
        # Workers may not have this module on their path: ship the actor class by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = time.monotonic()
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except Exception as exc:
        raise StandinError(f"cannot connect to Ray at {address}: {type(exc).__name__}: {exc}") from exc
    # ray.init installs its own SIGTERM handler (exit status 15); take it back.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"connected to Ray: {ray.cluster_resources()}")
    server: StandinServer | None = None
    pg = None
    try:
        pg, ranks = start_ranks(ray, opts, driver_ip, pg_timeout, stop)
        for rank in ranks:
            log(f"{rank.where()}: gpus {rank.gpu_ids}, env {rank.env}")
        if stop.is_set():
            raise StandinError("stopped during start-up")
        server = StandinServer(opts, ranks)
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        shown_host = opts.host or "0.0.0.0"
        log(f"Starting vLLM API server (stand-in) on http://{shown_host}:{opts.port} "
            f"after {time.monotonic() - started:.1f}s")
        print("INFO:     Application startup complete.", flush=True)

        while not stop.wait(1.0):
            try:
                dead = find_dead_rank(ray, ranks)
            except Exception as exc:
                raise StandinError(f"lost the Ray cluster: {type(exc).__name__}: {exc}") from exc
            if dead is not None:
                rank, reason = dead
                raise StandinError(f"{rank.where()} died: {reason}")
        log(f"received signal {signal.Signals(received[0]).name}, shutting down")
        return EXIT_OK
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if pg is not None:
            try:
                ray.util.remove_placement_group(pg)
            except Exception:  # the cluster may be gone; nothing left to release
                pass


def main(argv: list[str] | None = None) -> int:
    environ = dict(os.environ)
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv, environ)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        return run(opts, environ)
    except StandinError as exc:
        print(f"(vLLM stand-in) ERROR {exc}", file=sys.stderr, flush=True)
        # Ray's own shutdown can hang when a node or the head is gone.
        os._exit(EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
