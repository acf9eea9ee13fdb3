"""The Apptainer image: the definition, and the CPU test image built from it.

The image is built by `make test-image`, not here. Its path is VLLM_HPC_TEST_IMAGE,
else the Makefile's default. A missing Apptainer or image is a failure, unless
VLLM_HPC_SKIP_APPTAINER=1 asks to skip this layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import requests
from spython.main import Client
from spython.main.parse.parsers import SingularityParser

from helpers import CPU_VLLM_ENV, REPO, SHIPPED_VLLM, free_port, served_vllm_version

pytestmark = pytest.mark.apptainer

DEF = REPO / "container" / "vllm-hpc.def"
BED_CACHE = Path(os.environ.get("VLLM_HPC_BED_CACHE", "/var/cache/vllm-hpc-bed"))
IMAGE = Path(os.environ.get("VLLM_HPC_TEST_IMAGE", BED_CACHE / "vllm-hpc-test.sif"))
PROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("VLLM_HPC_SKIP_APPTAINER") == "1":
        pytest.skip("VLLM_HPC_SKIP_APPTAINER=1")
    if shutil.which("apptainer") is None:
        pytest.fail("apptainer is not on PATH: run `make apptainer` (or set VLLM_HPC_SKIP_APPTAINER=1 to skip)")
    if not IMAGE.exists():
        pytest.fail(f"no test image at {IMAGE}: run `make test-image` (or set VLLM_HPC_TEST_IMAGE)")
    return str(IMAGE)


def apptainer(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["apptainer", *args], capture_output=True, text=True, timeout=timeout, env=env)


# ---- the definition, read with spython ---------------------------------------------


def parse_arguments(text: str) -> dict[str, str]:
    block = re.search(r"^%arguments\n(.*?)^%", text, re.M | re.S)
    assert block, "the definition has no %arguments section"
    return dict(re.findall(r"^\s+([A-Z_]+)=(.*)$", block.group(1), re.M))


def render(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: args[m.group(1)], text)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The definition as built with its defaults, parsed by spython's recipe parser.

    spython reads templated headers literally and matches "bootstrap" and "from:"
    anywhere on a line, comments included, so the file is rendered with the
    %arguments defaults and stripped of comment lines first.
    """
    text = DEF.read_text()
    rendered = render(text, parse_arguments(text))
    plain = "\n".join(line for line in rendered.splitlines() if not line.strip().startswith("#"))
    path = tmp_path_factory.mktemp("def") / "vllm-hpc.def"
    path.write_text(plain + "\n")
    return SingularityParser(str(path), load=True).recipe["spython-base"]


def test_every_template_name_is_an_argument():
    text = DEF.read_text()
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert used == set(parse_arguments(text))


def test_defaults_make_the_production_image(recipe):
    args = parse_arguments(DEF.read_text())
    assert args["BOOTSTRAP"] == "docker"
    assert recipe.fromHeader == "nvidia/cuda:12.8.1-devel-ubuntu22.04"
    # Every package from the hashed lock, which %files copies to where VLLM_SPEC reads it.
    assert args["VLLM_SPEC"] == "--require-hashes -r /opt/vllm-hpc/requirements.lock"
    assert dict(line.split() for line in recipe.files)["container/requirements.lock"] == "/opt/vllm-hpc/requirements.lock"
    assert args["EXTRA_SPEC"] == ""
    assert args["PIP_ARGS"] == ""


def test_image_holds_only_the_project_sources(recipe):
    copies = dict(line.split() for line in recipe.files)
    assert copies == {
        "container/requirements.lock": "/opt/vllm-hpc/requirements.lock",
        "pyproject.toml": "/opt/vllm-hpc/src/pyproject.toml",
        "README.md": "/opt/vllm-hpc/src/README.md",
        "entrypoint": "/opt/vllm-hpc/src/entrypoint",
    }


def test_environment_sets_only_path_and_runscript_runs_vllm_hpc(recipe):
    assert recipe.environ == ['PATH="/opt/vllm-hpc/venv/bin:$PATH"']
    assert recipe.cmd == 'exec vllm-hpc "$@"'


def test_infiniband_userspace_is_installed(recipe):
    post = " ".join(recipe.install)
    for package in ["rdma-core", "libibverbs1", "ibverbs-providers", "ibverbs-utils"]:
        assert re.search(rf"\b{package}\b", post), package


# ---- the built image ---------------------------------------------------------------


def test_run_help_shows_usage(image):
    result = apptainer("run-help", image, timeout=60)
    assert result.returncode == 0, result.stderr
    for words in ["One GPU", "One node, several GPUs", "Several nodes", "--bind", "VLLM_HPC_HOME"]:
        assert words in result.stdout, words


def test_apptainer_test_passes(image):
    result = apptainer("test", image, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"vllm-hpc {PROJECT_VERSION}" in lines
    # The version users get, in the image the tests serve from.
    assert "vllm 0.11.0" in lines
    # %test loads a tokenizer and a Llama-3 config through vLLM's own loaders.
    assert "ok   tokenizer: CachedPreTrainedTokenizerFast, 6 tokens" in lines
    assert "ok   llama-3 config: rope_theta 500000" in lines
    assert "vllm-hpc vllmcheck: passed" in lines
    assert any(re.fullmatch(r"ray \d+\.\d+\.\d+\S*", line) for line in lines)
    assert "Usage: vllm-hpc" in result.stdout


INSTALLED = """
import importlib.metadata as md, json, platform
found = {}
for module in ["vllm_hpc", "vllm", "ray", "torch", "transformers"]:
    found[module] = md.version(md.packages_distributions()[module][0])
found["python"] = platform.python_version()
print(json.dumps(found))
"""


def test_labels_hold_the_installed_versions(image):
    labels = Client.inspect(image)["attributes"]["labels"]
    result = apptainer("exec", image, "python", "-c", INSTALLED, timeout=120)
    assert result.returncode == 0, result.stderr
    installed = json.loads(result.stdout)
    assert labels["vllm-hpc.version"] == installed["vllm_hpc"] == PROJECT_VERSION
    assert labels["vllm-hpc.vllm.version"] == installed["vllm"]
    assert labels["vllm-hpc.ray.version"] == installed["ray"]
    assert labels["vllm-hpc.torch.version"] == installed["torch"]
    assert labels["vllm-hpc.transformers.version"] == installed["transformers"]
    assert labels["vllm-hpc.python.version"] == installed["python"]
    major, minor = (int(x) for x in installed["ray"].split(".")[:2])
    assert (major, minor) >= (2, 52)


def test_labels_record_the_lock_the_image_was_built_from(image):
    """The test image installs the test bed's lock; its label is that file's hash."""
    labels = Client.inspect(image)["attributes"]["labels"]
    digest = hashlib.sha256((REPO / "tests/bed/requirements-cpu.lock").read_bytes()).hexdigest()
    assert labels["vllm-hpc.lock"] == f"sha256:{digest} /srv/requirements-cpu.lock"


def test_runscript_hands_arguments_to_vllm_hpc(image):
    result = apptainer("run", image, "--version", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vllm-hpc, version {PROJECT_VERSION}"


def test_infiniband_libraries_load(image):
    script = "ls /etc/libibverbs.d/*.driver >/dev/null && command -v ibv_devinfo && ldconfig -p | grep -q 'libibverbs.so.1 '"
    result = apptainer("exec", image, "sh", "-c", script, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- serving from the image --------------------------------------------------------


def container_env(home: Path) -> dict[str, str]:
    """The host environment (Apptainer passes it in) without this project's or Slurm's settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "VLLM_", "RAY_", "PYTHON"))}
    env.update(CPU_VLLM_ENV)
    env["VLLM_HPC_HOME"] = str(home)
    return env


def wait_for_job_dir(home: Path, process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = list((home / "jobs").glob("*")) if (home / "jobs").exists() else []
        if jobs:
            return jobs[0].name
        assert process.poll() is None, f"apptainer run exited {process.returncode} before creating a job"
        time.sleep(0.5)
    raise AssertionError(f"no job directory under {home / 'jobs'} within {timeout}s")


def test_serve_answers_a_chat_completion(image, tiny_model, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = container_env(home)
    port = free_port()
    log = tmp_path / "serve.log"
    argv = ["apptainer", "run", "--bind", f"{tiny_model}:/models/tiny:ro", image,
            "serve", "--model", "/models/tiny", "--served-model-name", "tiny", "--interface", "lo",
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512"]
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        job = wait_for_job_dir(home, process, timeout=120)
        wait = apptainer("exec", image, "vllm-hpc", "wait", job, "--timeout", "600", "--json", env=env, timeout=660)
        assert wait.returncode == 0, f"{wait.stderr}\n--- serve log:\n{log.read_text()[-3000:]}"
        print(f"\nvllm-hpc serve in the image: ready after {time.monotonic() - started:.1f}s")
        endpoint = json.loads((home / "jobs" / job / "endpoint.json").read_text())
        key = (home / "jobs" / job / "api-key").read_text().strip()
        request = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "temperature": 0}
        reply = requests.post(f"{endpoint['url']}/chat/completions", json=request,
                              headers={"Authorization": f"Bearer {key}"}, timeout=120)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "chat.completion" and body["model"] == "tiny"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert 0 < body["usage"]["completion_tokens"] <= 4
        assert served_vllm_version(home / "jobs" / job) == SHIPPED_VLLM
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
    assert code == 128 + signal.SIGTERM, f"exit {code}\n{log.read_text()[-2000:]}"


# ---- a model from a Hugging Face cache, through the sbatch script and the image -----


def make_hf_snapshot(model: Path, cache: Path) -> Path:
    """Lay ``model`` out as the Hugging Face cache does: snapshots/<rev>/<file> are links into ../../blobs."""
    repo = cache / "models--bed--tiny"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    for path in sorted(model.iterdir()):
        if path.is_file():
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            shutil.copyfile(path, blob)
            (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return snapshot


def test_single_gpu_job_serves_a_hugging_face_cache_snapshot_from_the_image(image, cluster2, tiny_model):
    """The sbatch launcher binds the snapshot's whole repository, so its links resolve inside the image."""
    from helpers import job_env, job_home, job_processes, submit, wait_ready, wait_until

    home = job_home("hf-snapshot")
    # Not under /tmp, /var/tmp, $HOME or the submit directory, which Apptainer binds anyway.
    cache = Path("/var/lib/vllm-hpc-tests") / f"{os.getpid()}-hf"
    shutil.rmtree(cache, ignore_errors=True)
    snapshot = make_hf_snapshot(Path(tiny_model), cache / "hub")
    env = job_env(cluster2, home, image=image)
    out = home / "job.out"
    t0 = time.monotonic()
    job = submit(cluster2, "single-gpu.sbatch", [], ["--model", str(snapshot), "--served-model-name", "tiny", "--max-model-len", "512"], env, out)
    try:
        status = wait_ready(job, env, out, timeout=900)
        print(f"\nsingle-GPU job {job} in the image, model from a Hugging Face cache: submit to ready {time.monotonic() - t0:.1f}s")
        endpoint = status["endpoint"]
        assert endpoint["model_path"] == str(snapshot)
        assert served_vllm_version(home / "jobs" / str(job)) == SHIPPED_VLLM
        key = Path(endpoint["api_key_file"]).read_text().strip()
        request = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "temperature": 0}
        reply = requests.post(f"{endpoint['url']}/chat/completions", json=request, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        assert reply.status_code == 200, reply.text
    finally:
        cluster2.slurm(["scancel", str(job)], check=False)
        wait_until("job processes gone", lambda: not any(job_processes(cluster2, n) for n in cluster2.node_names), 90)
        shutil.rmtree(cache, ignore_errors=True)
