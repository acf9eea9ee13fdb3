"""Ray's own command line (`ray start ...`), without the command groups it only lists.

`ray start` imports all of Ray's CLI before it starts anything, including three optional
groups that Ray itself wraps in ``try``/``except`` and drops when they fail to import:
`ray serve` (which imports Ray Serve, and through it pandas where pandas is installed,
before failing on Serve's missing dependencies), `ray job` and the state commands
(`ray list`, `ray get`, `ray summary`, `ray logs`). A serving job's nodes never use
them, yet every node paid for them before its GCS or raylet started: on the idle
2-core test bed, with vLLM's packages installed, importing Ray's CLI takes 2.1-2.3 s
with them and 0.6 s without (3 runs each), and a head alone is in its node table after
4.54 s instead of 5.26 s (`tests/bench/bench.py --only head`, medians of 3). Marking
them absent (``sys.modules[name] = None``) makes their import fail at once, the way
Ray already handles; everything `ray start` does is unchanged. Run as
``python -m vllm_hpc.raystart start --block ...``.
"""

from __future__ import annotations

import sys

OPTIONAL_CLI_GROUPS = ("ray.serve.scripts", "ray.dashboard.modules.job.cli", "ray.util.state.state_cli")


def leave_out_optional_groups() -> None:
    for name in OPTIONAL_CLI_GROUPS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def main() -> None:
    leave_out_optional_groups()
    from ray.scripts.scripts import cli

    cli(prog_name="ray")


if __name__ == "__main__":
    main()
