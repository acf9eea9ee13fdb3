"""The GPU acceptance run (tests/gpu/acceptance.py) as a pytest test, marked `gpu`.

    python -m pytest -m gpu tests/gpu            # skipped where no NVIDIA GPU is visible

Environment: VLLM_HPC_GPU_MODEL (a model directory; default: generate the 1 B test
model into the work directory), VLLM_HPC_GPU_WORKDIR (default: pytest's tmp_path),
VLLM_HPC_GPU_ARGS (more acceptance.py options, e.g. "--configs single,tp2").
The full run takes about 15 minutes on 2 GPUs; this wrapper runs it with --quick.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

HERE = Path(__file__).resolve().parent


def _gpu_count() -> int:
    sys.path.insert(0, str(HERE))
    from acceptance import count_gpus

    return count_gpus()[0]


def test_acceptance(tmp_path: Path) -> None:
    if _gpu_count() == 0:
        pytest.skip("no NVIDIA GPU visible (nvidia-smi lists none)")
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not importable here (run inside the vllm-hpc image)")
    workdir = Path(os.environ.get("VLLM_HPC_GPU_WORKDIR") or tmp_path)
    argv = [sys.executable, str(HERE / "acceptance.py"), "--quick", "--workdir", str(workdir)]
    model = os.environ.get("VLLM_HPC_GPU_MODEL")
    argv += ["--model", model] if model else ["--make-model"]
    argv += shlex.split(os.environ.get("VLLM_HPC_GPU_ARGS", ""))
    done = subprocess.run(argv, timeout=3 * 3600)
    assert done.returncode == 0, f"acceptance run failed (exit {done.returncode}); results and logs under {workdir}"
