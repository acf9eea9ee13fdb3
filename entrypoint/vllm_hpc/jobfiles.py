"""The job directory: private files, secrets, the leader's rendezvous, state and endpoint.

Everything is created 0700/0600: only the job's user reads it. The directory sits on
a file system every node of the job sees (the home directory, by default).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError


def make_private_dir(path: str | Path) -> Path:
    directory = Path(path)
    old = os.umask(0o077)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    finally:
        os.umask(old)
    os.chmod(directory, 0o700)
    return directory


def write_private(path: str | Path, text: str) -> None:
    """Atomically write a file only its owner can read."""
    target = Path(path)
    make_private_dir(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}", "remove the file or the job directory") from None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def read_secret_file(path: str, what: str) -> str:
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as err:
        raise ConfigError(f"cannot read the {what} file {path}: {err.strerror}", f"check the {what} file path") from None
    if mode & 0o077:
        raise ConfigError(
            f"the {what} file {path} can be read by other users (mode {oct(mode & 0o777)})",
            f"run chmod 600 {path}",
        )
    if not value:
        raise ConfigError(f"the {what} file {path} is empty", f"write the {what} into it")
    return value


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def update_state(path: str, phase: str, fresh: bool = False, **fields: Any) -> None:
    """The job's phase for `vllm-hpc status`: starting, ready, failed, stopped.
    ``fresh`` starts a new file instead of adding to the one there (a new run)."""
    data = {} if fresh else read_json(path) or {}
    data.update(fields)
    data["phase"] = phase
    data["updated"] = now_iso()
    data["updated_epoch"] = time.time()
    write_json(path, data)
