"""Match the test bed's lock file against a wheelhouse (a folder of wheels).

    python wheelhouse.py missing LOCK WHEELHOUSE      # print pins with no wheel there

Standard library only, so any Python 3.9+ can run it before a venv exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip carries a copy
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def normalize_version(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion:
        return version.lower()


def parse_pins(text: str) -> list[tuple[str, str]]:
    """(name, version) of every `name==version` line; comments and options ignored."""
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        match = _PIN.match(line)
        if match:
            pins.append((match.group(1), match.group(2)))
        elif line.strip() and not line.strip().startswith("-"):
            raise ValueError(f"not a pinned requirement: {line.strip()!r}")
    return pins


def parse_wheel_filename(filename: str) -> tuple[str, str]:
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename!r}")
    return normalize_name(parts[0]), normalize_version(parts[1])


def find_wheels(wheelhouse: Path) -> dict[tuple[str, str], list[Path]]:
    found: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        found.setdefault(parse_wheel_filename(path.name), []).append(path)
    return found


def find_missing(pins: list[tuple[str, str]], wheelhouse: Path) -> list[str]:
    have = find_wheels(wheelhouse) if wheelhouse.is_dir() else {}
    return [
        f"{name}=={version}"
        for name, version in pins
        if (normalize_name(name), normalize_version(version)) not in have
    ]


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "missing":
        pins = parse_pins(Path(argv[1]).read_text())
        for requirement in find_missing(pins, Path(argv[2])):
            print(requirement)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
