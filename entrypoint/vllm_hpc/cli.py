"""The `vllm-hpc` command. Parses arguments and maps errors to exit codes; the work
is elsewhere. Imports stay light here: no vLLM or Ray on the `plan` and `--help` paths."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_USAGE, NetworkError, Signalled, VllmHpcError
from .plan import Plan, ServeOptions, build_plan, render_plan

SERVE_EPILOG = """\b
Under Slurm run one task per node (srun --ntasks-per-node=1): node rank 0 becomes
the leader (Ray head + server), the others join it as Ray workers. Outside Slurm
it serves on this machine alone. Anything after `--` goes to vLLM unchanged.

\b
Examples:
  vllm-hpc serve --model /models/Llama-3.1-8B-Instruct
  srun --ntasks-per-node=1 vllm-hpc serve --model /models/X -- --max-model-len 8192
  vllm-hpc plan --model /models/X --json
"""


def _serve_options(func: Callable) -> Callable:
    options = [
        click.option("--model", required=True, help="Model directory (with config.json), readable on every node."),
        click.option("--served-model-name", help="Name clients use in requests [default: the model directory's name]."),
        click.option("--host", help="Address the server listens on [default: this node's fabric address]; 0.0.0.0 for all."),
        click.option("--port", type=click.IntRange(1, 65535), help="Server port [default: 8000 alone, a per-job port under Slurm]."),
        click.option("--interface", envvar="VLLM_HPC_INTERFACE", help="Network interface for vLLM, Ray, NCCL and Gloo [default: ib*, hsn*, then the default route]."),
        click.option("--tensor-parallel-size", "-tp", type=click.IntRange(1), help="[default: GPUs per node]"),
        click.option("--pipeline-parallel-size", "-pp", type=click.IntRange(1), help="[default: number of nodes]"),
        click.option("--api-key-file", type=click.Path(dir_okay=False), help="Read the API key from this file (mode 0600) [default: generate one per job]."),
        click.option("--no-api-key", is_flag=True, help="Serve without an API key (anyone who reaches the port can use it)."),
        click.option("--dtype", help="Passed to vLLM."),
        click.option("--max-model-len", type=click.IntRange(1), help="Passed to vLLM."),
        click.option("--max-num-batched-tokens", type=click.IntRange(1), help="Passed to vLLM."),
        click.option("--max-num-seqs", type=click.IntRange(1), help="Passed to vLLM."),
        click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0), help="Passed to vLLM."),
        click.option("--join-timeout", type=click.FloatRange(1), help="Seconds for all nodes to join [default: 600, capped by the walltime]."),
        click.option("--ready-timeout", type=click.FloatRange(1), help="Seconds for the model to load and answer [default: 1800, capped by the walltime]."),
        click.option("--liveness-interval", type=click.FloatRange(0), help="Seconds between liveness completions; 0 turns it off [default: 60]."),
        click.option("--stop-timeout", type=click.FloatRange(1), default=10.0, show_default=True, help="Seconds each part gets to stop before it is killed."),
        click.option("--compile-cache", type=click.Path(file_okay=False), help="Persistent vLLM cache dir (torch.compile, Triton) shared between jobs."),
        click.option("--fabric-check", is_flag=True, envvar="VLLM_HPC_FABRIC_CHECK",
                     help="Several nodes: measure the fabric (as doctor --fabric) before Ray and vLLM start; a node that cannot take part fails the job."),
        click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options_from(kwargs: dict[str, Any]) -> ServeOptions:
    extra = tuple(kwargs.pop("vllm_args"))
    if kwargs.get("api_key_file") and kwargs.get("no_api_key"):
        raise click.UsageError("--api-key-file and --no-api-key exclude each other")
    return ServeOptions(extra_args=extra, **kwargs)


def _make_plan(options: ServeOptions, env: dict[str, str] | None = None) -> tuple[Plan, Any, Any]:
    """Read this node (environment, interfaces, model path) and plan. Returns plan, settings, slurm."""
    from .network import choose_interface, read_default_route, read_interfaces
    from .settings import read_settings
    from .slurm import local_hostname, read_slurm_env

    environ = dict(os.environ if env is None else env)
    settings = read_settings(environ)
    # nvidia-smi only outside Slurm: inside, it also sees other jobs' GPUs.
    outside = not (environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"))
    detected = _detect_gpus() if outside and "CUDA_VISIBLE_DEVICES" not in environ else None
    slurm = read_slurm_env(environ, local_hostname(), detected)
    network = choose_interface(read_interfaces(), options.interface or settings.interface, read_default_route())
    model = Path(options.model).expanduser()
    exists = model.is_dir()
    config = model / "config.json"
    dangling = os.readlink(config) if config.is_symlink() and not config.exists() else None
    plan = build_plan(options, settings, slurm, network, exists, config.is_file(), time.time(), dangling)
    return plan, settings, slurm


def _detect_gpus() -> int | None:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _check_ports(plan: Plan, settings: Any, options: ServeOptions) -> tuple[ServeOptions, dict[str, str], list[str]]:
    """Ports in use: Ray's block moves to the next free one (unless VLLM_HPC_PORT_BASE
    chose it), and a server port we chose ourselves moves to a free one.

    Returns the options and environment to plan again with, and what moved.
    """
    from .network import port_is_free
    from .plan import block_ports, next_port_blocks, owned_ports, port_block
    from .settings import ENV_PORT_BASE

    bind_ip = plan.node_ip
    env_change: dict[str, str] = {}
    moved: list[str] = []

    def busy(ports: dict[str, int]) -> list[str]:
        return [f"{port} ({name})" for name, port in ports.items() if not port_is_free(bind_ip, port)]

    in_use = busy(owned_ports(plan.role, plan.ports))
    if in_use:
        if settings.port_base is not None:
            raise NetworkError(
                f"port {in_use[0]} on {bind_ip} is already in use on {plan.hostname}",
                "set VLLM_HPC_PORT_BASE to the start of a free block of 100 ports, or unset it to let vllm-hpc find one",
            )
        first = port_block(plan.job_id, None)
        for block in next_port_blocks(first):
            if not busy(owned_ports(plan.role, block_ports(block))):
                env_change[ENV_PORT_BASE] = str(block)
                moved.append(f"port {in_use[0]} of the job's block {first} is in use on this node; using block {block}")
                break
        else:
            raise NetworkError(f"no free block of 100 ports on {bind_ip}", "set VLLM_HPC_PORT_BASE to a free block")
    if plan.role == "worker":
        return options, env_change, moved
    host = plan.host if plan.host not in ("0.0.0.0", "::") else "0.0.0.0"
    # A server port of our own choosing is the first of the block, which may have moved.
    port = plan.port if plan.port_explicit or not env_change else int(env_change[ENV_PORT_BASE])
    if port_is_free(host, port):
        return options, env_change, moved
    if plan.port_explicit:
        raise NetworkError(f"port {plan.port} on {host} is already in use on {plan.hostname}", "choose another with --port")
    taken = set(block_ports(port).values()) if env_change else set(plan.ports.values())
    for candidate in range(port + 1, port + 200):
        if port_is_free(host, candidate) and candidate not in taken:
            moved.append(f"port {port} is in use; serving on {candidate} instead")
            return dataclasses.replace(options, port=candidate), env_change, moved
    raise NetworkError(f"no free port near {port} on {host}", "choose one with --port")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vllm-hpc")
def cli() -> None:
    """Serve a model with vLLM on Slurm: one GPU, one node, or several nodes over Ray.

    \b
    Everyday commands:
      serve   run the server (on every node of the job)
      plan    print what serve would do on this node, start nothing
      status  is the job pending, starting, ready or failed; where is it
      wait    block until the job is ready (or failed)
      chat    send one chat message to the job's server
      doctor  check this node: GPUs, fabric, InfiniBand, ports, model, Apptainer
    """


@cli.command(epilog=SERVE_EPILOG)
@_serve_options
def serve(**kwargs: Any) -> None:
    """Serve a model with vLLM on this node's part of the job."""
    from .serve import NodeRun
    from .supervisor import stderr_reporter

    options = _options_from(kwargs)
    plan, settings, slurm = _make_plan(options)
    options, env_change, moved = _check_ports(plan, settings, options)
    if moved:
        plan, settings, slurm = _make_plan(options, {**os.environ, **env_change})
    from .jobfiles import make_private_dir

    make_private_dir(plan.paths.log_dir)
    reporter = stderr_reporter(f"{plan.hostname}/{plan.role}", f"{plan.paths.log_dir}/vllm-hpc.log")
    for change in moved:
        reporter.say(f"warning: {change}")
    for warning in plan.warnings:
        reporter.say(f"warning: {warning}")
    reporter.say(
        f"job {plan.job_id}: {plan.role} on {plan.hostname} ({plan.interface} {plan.node_ip}), "
        f"{len(plan.nodes)} node(s) x {plan.gpus_per_node} GPU(s), TP {plan.tensor_parallel_size} x PP {plan.pipeline_parallel_size}"
    )
    runner = NodeRun(plan, settings, options, slurm, reporter)
    try:
        code = runner.run()
    except VllmHpcError as err:
        if not runner.ray_connected:
            raise
        _exit_now(err.exit_code, error_line(err))
    if runner.ray_connected:
        _exit_now(code, None)
    sys.exit(code)


def _exit_now(code: int, message: str | None) -> None:
    """End a process that is a Ray client without Ray's exit hooks, which can wait
    seconds on a control service that is already gone; the node's children are stopped."""
    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def error_line(err: VllmHpcError) -> str:
    if isinstance(err, Signalled):
        return f"vllm-hpc: {err.problem}"
    return f"vllm-hpc: error: {err.one_line()}"


@cli.command(epilog=SERVE_EPILOG)
@_serve_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan(as_json: bool, **kwargs: Any) -> None:
    """Print what `serve` would run on this node, without starting anything."""
    options = _options_from(kwargs)
    node_plan, _, _ = _make_plan(options)
    if as_json:
        click.echo(json.dumps(node_plan.to_dict(), indent=2))
    else:
        click.echo(render_plan(node_plan))


@cli.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(job_id: str | None, as_json: bool) -> None:
    """Show whether a job is pending, starting, ready, failed or ended, and its endpoint."""
    from .client import job_status, render_status

    info = job_status(job_id)
    click.echo(json.dumps(info, indent=2) if as_json else render_status(info))


@cli.command()
@click.argument("job_id", required=False)
@click.option("--timeout", type=click.FloatRange(1), default=1800.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def wait(job_id: str | None, timeout: float, as_json: bool) -> None:
    """Block until the job's server is ready; fail if the job fails or ends first."""
    from .client import render_status, wait_until_ready

    info = wait_until_ready(job_id, timeout)
    click.echo(json.dumps(info, indent=2) if as_json else render_status(info))


@cli.command()
@click.argument("args", nargs=-1, required=True)
@click.option("--system", default="You are a helpful assistant.", show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole OpenAI response.")
def chat(args: tuple[str, ...], system: str, max_tokens: int, temperature: float, as_json: bool) -> None:
    """Send one message: `vllm-hpc chat [JOBID] "message"`."""
    from .client import chat_once

    if len(args) > 2:
        raise click.UsageError("give at most a job id and one quoted message")
    job_id, message = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    reply = chat_once(job_id, message, system, max_tokens, temperature)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    else:
        click.echo(reply["choices"][0]["message"]["content"])


LAUNCH_EPILOG = """\b
Serve options (--served-model-name, --max-model-len, ...) and, after `--`, vLLM's own
options go to the job unchanged. Site defaults (partition, account, image, bind, ...):
~/.vllm-hpc/defaults, one `key = value` per line, or VLLM_HPC_<KEY> variables.

\b
Examples:
  vllm-hpc launch --model /models/X --wait
  vllm-hpc launch --model /models/X --nodes 2 --gpus-per-node 4 --partition gpu --time 8:00:00
  vllm-hpc launch --model /models/X --gpus-per-node 4 --dry-run -- --max-model-len 8192
"""


def _slurm_options(func: Callable) -> Callable:
    """launch's Slurm options, one per entry of launch.SLURM_OPTIONS."""
    from .launch import SLURM_OPTIONS

    for option, text in reversed(SLURM_OPTIONS.values()):
        func = click.option(option, help=text)(func)
    return func


@cli.command(epilog=LAUNCH_EPILOG, context_settings={"ignore_unknown_options": True})
@click.option("--model", required=True, help="Model directory (with config.json), readable on the job's nodes.")
@click.option("--nodes", type=click.IntRange(1), default=1, show_default=True, help="Nodes (several: Ray, pipeline parallel = nodes).")
@click.option("--gpus-per-node", type=click.IntRange(0), help="GPUs per node [default: the site's, else 1].")
@_slurm_options
@click.option("--image", help="The image (the scripts' VLLM_HPC_IMAGE) [default: the site's, else ./vllm-hpc.sif].")
@click.option("--bind", help="Extra Apptainer binds, comma separated (the scripts' VLLM_HPC_BIND).")
@click.option("--sbatch", "sbatch_extra", multiple=True, help="Any other sbatch option, as one word (--sbatch=--mail-type=END).")
@click.option("--dry-run", is_flag=True, help="Print the sbatch command; submit nothing.")
@click.option("--wait", "wait_ready", is_flag=True, help="Block until the server is ready; print the endpoint.")
@click.option("--timeout", type=click.FloatRange(1), default=1800.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
def launch(model: str, nodes: int, gpus_per_node: int | None, sbatch_extra: tuple[str, ...], dry_run: bool, wait_ready: bool,
           timeout: float, as_json: bool, script_args: tuple[str, ...], **slurm: str | None) -> None:
    """Submit a vllm-hpc job from a login node: picks the sbatch script for the shape."""
    from .launch import check_serve_args, compose, read_defaults, submit
    from .settings import read_settings

    environ = dict(os.environ)
    defaults = read_defaults(environ, read_settings(environ).home)
    script_args = _with_separator(script_args)
    check_serve_args(model, script_args)
    submission = compose(model, nodes, gpus_per_node, slurm, defaults, script_args, sbatch_extra)
    if dry_run:
        click.echo(json.dumps({"configuration": submission.configuration, "argv": list(submission.argv), "env": submission.env}, indent=2)
                   if as_json else submission.shown())
        return
    job = submit(submission, environ)
    if not wait_ready:
        click.echo(json.dumps({"job_id": job, "configuration": submission.configuration}) if as_json
                   else f"submitted job {job} ({submission.configuration}); follow it with: vllm-hpc wait {job}")
        return
    click.echo(f"submitted job {job} ({submission.configuration}); waiting until it serves", err=True)
    from .client import render_status, wait_until_ready

    info = wait_until_ready(job, timeout)
    click.echo(json.dumps(info, indent=2) if as_json else render_status(info))


@cli.command("env", short_help="Print the exports that point any OpenAI client at a ready job.")
@click.argument("job_id", required=False)
def env_command(job_id: str | None) -> None:
    """Print `export OPENAI_BASE_URL=... OPENAI_API_KEY=... OPENAI_MODEL=...` for a ready
    job: `eval "$(vllm-hpc env JOBID)"` points any OpenAI SDK, curl or harness at it."""
    from .client import connection, env_lines

    click.echo("\n".join(env_lines(connection(job_id))))


@cli.command()
@click.argument("job_id", required=False)
@click.option("--timeout", type=click.FloatRange(1), default=300.0, show_default=True, help="Seconds to wait for Slurm to end the job.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def stop(job_id: str | None, timeout: float, as_json: bool) -> None:
    """Stop a job in order (server, then Ray, as on the walltime warning), wait until
    Slurm says it ended, and say how it ended. A job still queued is cancelled."""
    from .client import render_status, stop_job

    info = stop_job(job_id, timeout)
    click.echo(json.dumps(info, indent=2) if as_json else render_status(info))


@cli.command()
@click.argument("job_id", required=False)
@click.option("--watch", type=click.FloatRange(1), help="Refresh every S seconds until Ctrl-C (in place in a terminal, JSON lines otherwise).")
@click.option("--interval", type=click.FloatRange(0.5), default=2.0, show_default=True, help="Seconds between the two samples of one report.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per line with --watch).")
def metrics(job_id: str | None, watch: float | None, interval: float, as_json: bool) -> None:
    """How loaded the server is: requests running and waiting, token throughput, KV-cache
    use, prefix-cache hits, TTFT and end-to-end latency percentiles, aborted requests."""
    from .client import connection
    from .metrics import fetch, render, summarize

    conn = connection(job_id)
    base = conn["base_url"].removesuffix("/v1")
    terminal = sys.stdout.isatty() and not as_json
    before = fetch(base, time.time())
    while True:
        time.sleep(watch or interval)
        after = fetch(base, time.time())
        figures = summarize(before, after)
        if as_json or (watch and not terminal):
            click.echo(json.dumps({"job_id": conn["job_id"], "model": conn["model"], "time": after.taken, **figures}))
        else:
            click.echo(("\x1b[H\x1b[2J" if terminal and watch else "") + render(conn["job_id"], conn["model"], figures))
        if not watch:
            return
        before = after


@cli.command()
@click.option("--all", "include_ended", is_flag=True, help="Also the jobs that ended.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def jobs(include_ended: bool, as_json: bool) -> None:
    """List this user's vllm-hpc jobs: id, phase, Slurm state, model, nodes, age, URL.

    Jobs come from the job directory and from Slurm's queue (one of the project's
    scripts, or the job name vllm-hpc), so a job shows while it still waits for nodes."""
    from .client import list_jobs, render_jobs

    rows = list_jobs(include_ended)
    click.echo(json.dumps(rows, indent=2) if as_json else render_jobs(rows, time.time()))


@cli.command()
@click.option("--older-than", default="7d", show_default=True, help="Only jobs whose files are older: 7d, 12h, 30m or seconds.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed.")
def cleanup(older_than: str, dry_run: bool) -> None:
    """Remove the directories of ended jobs (never one Slurm still runs or holds)."""
    from .client import cleanup_jobs, parse_age

    removed = cleanup_jobs(parse_age(older_than), dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} job director{'y' if len(removed) == 1 else 'ies'}" + (f": {', '.join(removed)}" if removed else ""))


@cli.command()
@click.option("--model", help="Also check that this model directory is readable here.")
@click.option("--interface", envvar="VLLM_HPC_INTERFACE", help="Check this interface instead of the automatic choice.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--fabric", is_flag=True,
              help="Instead, measure the fabric between the job's nodes: an all-reduce (NCCL on GPUs, Gloo without) and "
                   "each node's link to the leader; run under srun, one task per node.")
@click.option("--fabric-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="How long the nodes wait for each other before the missing ones are named.")
def doctor(model: str | None, interface: str | None, as_json: bool, fabric: bool, fabric_timeout: float) -> None:
    """Check this node before serving: run it under srun on every node of a job."""
    from .doctor import render_checks, run_checks

    if fabric:
        from .doctor import fabric_test
        from .fabric import render

        result = fabric_test(dict(os.environ), interface, fabric_timeout)
        if result is not None:
            click.echo(json.dumps(result, indent=2) if as_json else render(result))
        return

    checks = run_checks(dict(os.environ), model, interface)
    click.echo(json.dumps(checks, indent=2) if as_json else render_checks(checks))
    failed = [c for c in checks if c["status"] == "fail"]
    if failed:
        from .errors import EXIT_DOCTOR

        sys.exit(EXIT_DOCTOR)


# The command line as given: click drops the `--` before vLLM's own options of
# `launch`, which must reach the job's serve command with it.
_RAW_ARGS: list[str] = []


def _with_separator(args: tuple[str, ...]) -> tuple[str, ...]:
    """``args`` (click's, after the known options) with the user's `--` put back."""
    if "--" not in _RAW_ARGS:
        return args
    after = len(_RAW_ARGS) - _RAW_ARGS.index("--") - 1
    cut = len(args) - after
    return (*args[:cut], "--", *args[cut:])


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per error, exit codes from errors.py."""
    _RAW_ARGS[:] = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv, prog_name="vllm-hpc", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        hint = ""
        if isinstance(err, click.UsageError) and err.ctx is not None:
            hint = f"; see '{err.ctx.command_path} --help'"
        print(f"vllm-hpc: error: {err.format_message()}{hint}", file=sys.stderr)
        sys.exit(err.exit_code if err.exit_code else EXIT_USAGE)
    except VllmHpcError as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as err:  # noqa: BLE001 - last resort: still one line, still nothing left running
        print(f"vllm-hpc: internal error: {type(err).__name__}: {err} (please report it)", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)
