"""Slurm hostlist expressions: ``gpu[01-03,07],login-b7`` to a list of names."""

from __future__ import annotations

import re

from .errors import ConfigError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError("nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("']' without '['")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError("'[' without ']'")
    parts.append("".join(current))
    return parts


def _expand_ranges(body: str) -> list[str]:
    values: list[str] = []
    for item in body.split(","):
        match = _RANGE.match(item.strip())
        if not match:
            raise ValueError(f"bad range {item!r}")
        first, last = match.group(1), match.group(2)
        if last is None:
            values.append(first)
            continue
        if int(last) < int(first):
            raise ValueError(f"range {item!r} goes backwards")
        width = len(first)  # Slurm pads to the width of the low end: [08-10]
        values.extend(str(n).zfill(width) for n in range(int(first), int(last) + 1))
    return values


def _expand_one(name: str) -> list[str]:
    # Each bracket group multiplies the names so far: rack[1-2]-gpu[1-2] gives four.
    names = [""]
    for literal, bracket, body in re.findall(r"([^\[\]]*)(\[([^\[\]]*)\])?", name):
        if not literal and not bracket:
            continue
        values = _expand_ranges(body) if bracket else [""]
        names = [f"{prefix}{literal}{value}" for prefix in names for value in values]
    return names


def parse_hostlist(text: str) -> list[str]:
    """Expand a Slurm hostlist, keeping Slurm's order and dropping repeats."""
    stripped = text.strip()
    if not stripped:
        raise ConfigError("empty node list", "check SLURM_JOB_NODELIST")
    try:
        names: list[str] = []
        for part in _split_top_level(stripped):
            if not part.strip():
                raise ValueError("empty name between commas")
            names.extend(_expand_one(part.strip()))
    except ValueError as err:
        raise ConfigError(
            f"cannot parse node list {text!r}: {err}",
            "use Slurm hostlist syntax such as gpu[01-04],gpu07",
        ) from None
    if any(re.search(r"[\s\[\]]", n) or not n for n in names):
        raise ConfigError(f"cannot parse node list {text!r}", "use Slurm hostlist syntax such as gpu[01-04]")
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]
