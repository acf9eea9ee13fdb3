"""Settings that come from the environment, read once.

``read_settings(os.environ)`` is called by the CLI only; everything else takes a
``Settings`` value, so tests pass their own mapping.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import ConfigError

DEFAULT_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# Every variable vllm-hpc itself reads. The README's table lists the same names.
ENV_HOME = "VLLM_HPC_HOME"
ENV_SERVER_MODULE = "VLLM_HPC_SERVER_MODULE"
ENV_INTERFACE = "VLLM_HPC_INTERFACE"
ENV_API_KEY = "VLLM_HPC_API_KEY"
ENV_API_KEY_FILE = "VLLM_HPC_API_KEY_FILE"
ENV_RAY_TMPDIR = "VLLM_HPC_RAY_TMPDIR"
ENV_COMPILE_CACHE = "VLLM_HPC_COMPILE_CACHE"
ENV_PORT_BASE = "VLLM_HPC_PORT_BASE"
ENV_LIVENESS = "VLLM_HPC_LIVENESS_INTERVAL"
ENV_JOIN_TIMEOUT = "VLLM_HPC_JOIN_TIMEOUT"
ENV_READY_TIMEOUT = "VLLM_HPC_READY_TIMEOUT"
ENV_RAY_START_ARGS = "VLLM_HPC_RAY_START_ARGS"
SYMM_MEM_ALIAS = "VLLM_USE_SYMMETRIC_MEMORY"  # named in old guides; vLLM never read it
SYMM_MEM_REAL = "VLLM_ALLREDUCE_USE_SYMM_MEM"


@dataclass(frozen=True)
class Settings:
    home: Path
    server_module: str
    python: str
    interface: str | None
    ray_tmpdir_base: str
    user_api_key_present: bool  # VLLM_HPC_API_KEY or VLLM_API_KEY is set (the value stays in the env)
    api_key_file: str | None
    compile_cache: str | None
    port_base: int | None
    liveness_interval: float | None
    join_timeout: float | None
    ready_timeout: float | None
    ray_start_args: tuple[str, ...]  # a site's extra `ray start` options, e.g. --object-store-memory
    container: str | None  # the Apptainer image this runs in (APPTAINER_CONTAINER), if any
    # The environment children start from; vllm-hpc adds to it, never edits the user's NCCL_* values.
    base_env: Mapping[str, str] = field(repr=False, default_factory=dict)


def _number(env: Mapping[str, str], name: str, kind: type = float) -> float | int | None:
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", f"unset {name} or give it a number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is negative", f"unset {name} or give it a positive number")
    return value


def _split_args(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(env.get(name) or ""))
    except ValueError as err:
        raise ConfigError(f"{name} cannot be split into arguments: {err}", f"fix the quoting in {name}") from None


def read_settings(env: Mapping[str, str]) -> Settings:
    home_raw = env.get(ENV_HOME) or str(Path(env.get("HOME") or Path.home()) / ".vllm-hpc")
    tmp_base = env.get(ENV_RAY_TMPDIR) or "/tmp"
    port_base = _number(env, ENV_PORT_BASE, int)
    if port_base is not None and not 1024 <= int(port_base) <= 65435:
        raise ConfigError(f"{ENV_PORT_BASE}={port_base} is outside 1024-65435", f"unset {ENV_PORT_BASE} or pick a free block")
    return Settings(
        home=Path(home_raw).expanduser(),
        server_module=env.get(ENV_SERVER_MODULE) or DEFAULT_SERVER_MODULE,
        python=sys.executable or "python3",
        interface=env.get(ENV_INTERFACE) or None,
        ray_tmpdir_base=tmp_base,
        user_api_key_present=bool(env.get(ENV_API_KEY) or env.get("VLLM_API_KEY")),
        api_key_file=env.get(ENV_API_KEY_FILE) or None,
        compile_cache=env.get(ENV_COMPILE_CACHE) or None,
        port_base=int(port_base) if port_base is not None else None,
        liveness_interval=_number(env, ENV_LIVENESS),
        join_timeout=_number(env, ENV_JOIN_TIMEOUT),
        ready_timeout=_number(env, ENV_READY_TIMEOUT),
        ray_start_args=_split_args(env, ENV_RAY_START_ARGS),
        container=env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER") or None,
        base_env=dict(env),
    )
