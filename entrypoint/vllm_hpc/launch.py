"""`vllm-hpc launch`: submit one of the project's sbatch scripts from a login node.

The scripts stay the one description of how a job runs; launch only picks the script
for the shape asked for (one GPU, one node, several nodes), composes the `sbatch`
command line from the options and the site's defaults, and submits it. Composing is
pure (``compose``); ``submit`` runs sbatch.

Site defaults come from ``$VLLM_HPC_HOME/defaults`` (``~/.vllm-hpc/defaults``), one
``key = value`` per line, and from ``VLLM_HPC_<KEY>`` variables, which win; the
command line wins over both. Keys: the Slurm options below, ``image``, ``bind``,
``scripts``, ``gpus_per_node``.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import ConfigError, LaunchError, ResourceError, UsageError

# launch option (and defaults key) -> sbatch option, and its help
SLURM_OPTIONS = {
    "partition": ("--partition", "Slurm partition."),
    "account": ("--account", "Slurm account."),
    "qos": ("--qos", "Slurm QOS."),
    "time": ("--time", "Walltime, as sbatch takes it [default: the script's 04:00:00]."),
    "exclude": ("--exclude", "Nodes to leave out."),
    "nodelist": ("--nodelist", "Nodes to use."),
    "constraint": ("--constraint", "Node features."),
    "reservation": ("--reservation", "Slurm reservation."),
    "cpus_per_gpu": ("--cpus-per-gpu", "CPUs per GPU [default: the script's 4]."),
    "mem_per_gpu": ("--mem-per-gpu", "Memory per GPU [default: the script's 32G]."),
    "job_name": ("--job-name", "Job name [default: vllm-hpc]."),
}
# defaults key -> the sbatch scripts' variable
SCRIPT_VARIABLES = {"image": "VLLM_HPC_IMAGE", "bind": "VLLM_HPC_BIND"}
DEFAULT_KEYS = (*SLURM_OPTIONS, *SCRIPT_VARIABLES, "scripts", "gpus_per_node")


@dataclass(frozen=True)
class Submission:
    script: str  # the sbatch script's path
    configuration: str  # "single-gpu", "single-node" or "multinode"
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # added to sbatch's environment (the scripts' variables)

    def shown(self) -> str:
        assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*assignments, shlex.join(self.argv)])


def read_defaults(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """The site's defaults: the file, then VLLM_HPC_<KEY> variables over it."""
    found: dict[str, str] = {}
    path = home / "defaults"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}", "fix its permissions or remove it") from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in DEFAULT_KEYS:
            raise ConfigError(f"{path} line {number}: '{line.strip()}' is not 'key = value' with a known key",
                              f"use one of: {', '.join(DEFAULT_KEYS)}")
        found[key] = value.strip()
    for key in DEFAULT_KEYS:
        value = env.get(f"VLLM_HPC_{key.upper()}")
        if value:
            found[key] = value
    return found


def default_scripts_dir() -> Path:
    """slurm/ of the checkout this package runs from (pip install -e, or the image's copy)."""
    return Path(__file__).resolve().parents[2] / "slurm"


def configuration_for(nodes: int, gpus_per_node: int) -> str:
    """Pure: which script serves this shape."""
    if nodes > 1:
        if gpus_per_node < 1:
            raise ResourceError(f"a {nodes}-node job needs GPUs on every node (--gpus-per-node is {gpus_per_node})",
                                "give --gpus-per-node N (tensor parallel = N, pipeline parallel = nodes)")
        return "multinode"
    return "single-gpu" if gpus_per_node == 1 else "single-node"


def compose(model: str, nodes: int, gpus_per_node: int | None, slurm: Mapping[str, str | None], defaults: Mapping[str, str],
            script_args: tuple[str, ...], sbatch_extra: tuple[str, ...] = ()) -> Submission:
    """Pure: the sbatch line for this request. ``slurm`` holds the command line's Slurm
    options (None: not given); ``script_args`` the serve and vLLM options for the script."""
    gpus = gpus_per_node if gpus_per_node is not None else int(defaults.get("gpus_per_node", "1"))
    if gpus < 0 or nodes < 1:
        raise ResourceError(f"--nodes {nodes} --gpus-per-node {gpus} is not a job shape", "give --nodes 1 or more and --gpus-per-node 0 or more")
    name = configuration_for(nodes, gpus)
    scripts = Path(defaults.get("scripts") or default_scripts_dir())
    script = scripts / f"{name}.sbatch"
    argv = ["sbatch", "--parsable"]
    if name == "multinode":
        argv += [f"--nodes={nodes}", f"--gpus-per-node={gpus}"]
    elif name == "single-node" and gpus > 1:
        argv += [f"--gpus-per-node={gpus}"]
    for key, (option, _) in SLURM_OPTIONS.items():
        value = slurm.get(key) or defaults.get(key)
        if value:
            argv.append(f"{option}={value}")
    argv += list(sbatch_extra)
    argv += [str(script), "--model", model, *script_args]
    env = {variable: str(slurm.get(key) or defaults[key]) for key, variable in SCRIPT_VARIABLES.items()
           if slurm.get(key) or defaults.get(key)}
    return Submission(str(script), name, tuple(argv), env)


def submit(submission: Submission, environ: Mapping[str, str]) -> str:
    """Runs sbatch; returns the job id (an array job's too)."""
    if not Path(submission.script).is_file():
        raise ConfigError(f"the sbatch script {submission.script} is not there",
                          "set scripts = DIR in ~/.vllm-hpc/defaults (or VLLM_HPC_SCRIPTS) to the directory of multinode.sbatch")
    try:
        done = subprocess.run(list(submission.argv), env={**environ, **submission.env}, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise LaunchError("sbatch is not on PATH: launch runs where Slurm's commands are (a login node)",
                          "load the site's Slurm module, or run launch on a login node") from None
    except subprocess.TimeoutExpired:
        raise LaunchError("sbatch did not answer within 120s", "check the Slurm controller (sinfo), then try again") from None
    if done.returncode != 0:
        lines = [line.removeprefix("sbatch: error: ").strip() for line in done.stderr.splitlines() if line.strip()]
        raise LaunchError(f"sbatch refused the job: {'; '.join(lines[-2:]) or 'exit ' + str(done.returncode)}",
                          "check the options against sinfo -s and sacctmgr show assoc user=$USER")
    return done.stdout.strip().split(";")[0]


def check_serve_args(model: str, script_args: tuple[str, ...]) -> None:
    """Bad serve options are refused here, not minutes later in the queue."""
    import click

    from .cli import serve

    try:
        serve.make_context("serve", ["--model", model, *script_args])
    except click.ClickException as err:
        raise UsageError(f"serve option: {err.format_message()}", "see vllm-hpc serve --help") from None
