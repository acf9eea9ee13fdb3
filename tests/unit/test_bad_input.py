"""Every row of the README's bad-input table, run through the real CLI: one line,
the documented exit code, no traceback, nothing left running."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"
# A 2-node job's step as srun starts it; SLURMD_NODENAME says which node this is.
JOB = {"SLURM_JOB_ID": "31", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_GPUS_ON_NODE": "4",
       "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_STEP_NUM_NODES": "2",
       "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURMD_NODENAME": "gpu01"}
BATCH = {k: v for k, v in JOB.items() if not k.startswith("SLURM_STEP_")}

# id (as in the README table), arguments, environment, exit code, words the message holds
CASES = [
    ("model path missing", ["plan", "--model", "/no/such/model"], {}, 3, ["does not exist"]),
    ("model dir without config.json", ["plan", "--model", "EMPTY"], {}, 3, ["no config.json"]),
    ("TP x PP not matching the GPUs", ["plan", "--model", "MODEL", "-tp", "2"], {**JOB, "SLURM_NODEID": "0"}, 4, ["does not match the 8 GPUs", "--tensor-parallel-size 4 --pipeline-parallel-size 2"]),
    ("no GPUs on a multi-node job", ["plan", "--model", "MODEL"], {**JOB, "SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "0"}, 4, ["no GPUs visible", "--gpus-per-node"]),
    ("bad node list", ["plan", "--model", "MODEL"], {**JOB, "SLURM_STEP_NODELIST": "gpu[01-02"}, 3, ["cannot parse node list"]),
    ("bad environment value", ["plan", "--model", "MODEL"], {**JOB, "SLURM_GPUS_ON_NODE": "four"}, 3, ["SLURM_GPUS_ON_NODE='four' is not a number"]),
    ("bad vllm-hpc variable", ["plan", "--model", "MODEL"], {"VLLM_HPC_JOIN_TIMEOUT": "soon"}, 3, ["VLLM_HPC_JOIN_TIMEOUT"]),
    ("unknown interface", ["plan", "--model", "MODEL", "--interface", "ib7"], {}, 5, ["'ib7' does not exist"]),
    ("no usable network interface", ["plan", "--model", "MODEL"], {"NETNS": "1"}, 5, ["no usable network interface"]),
    ("port in use", ["serve", "--model", "MODEL", "--interface", "lo", "--host", "127.0.0.1", "--port", "BUSY"], {}, 5, ["already in use", "--port"]),
    ("leader unreachable", ["serve", "--model", "MODEL", "--interface", "lo", "--join-timeout", "2"], {**JOB, "SLURM_NODEID": "1", "SLURMD_NODENAME": "gpu02"}, 6, ["leader gpu01", "not done after 2s"]),
    ("unknown option", ["serve", "--model", "MODEL", "--tensor-paralel-size", "2"], {}, 2, ["No such option"]),
    ("API key on the command line", ["serve", "--model", "MODEL", "--", "--api-key", "abc"], {}, 2, ["visible to every user"]),
    ("API key file readable by others", ["serve", "--model", "MODEL", "--interface", "lo", "--api-key-file", "OPENKEY"], {}, 3, ["can be read by other users", "chmod 600"]),
    ("Ray temp dir too long", ["plan", "--model", "MODEL", "--interface", "lo"], {**JOB, "SLURM_NODEID": "0", "VLLM_HPC_RAY_TMPDIR": "/scratch/local/a/rather/long/node/local/path"}, 3, ["over the 43"]),
    ("unknown job", ["status", "424242"], {}, 10, ["424242"]),
    ("several tasks per node", ["serve", "--model", "MODEL", "--interface", "lo"], {**JOB, "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}, 13, ["2 tasks of this step run on one node", "--ntasks-per-node=1"]),
    ("multi-node serve outside srun", ["serve", "--model", "MODEL", "--interface", "lo"], BATCH, 13, ["outside any srun step", "srun --ntasks-per-node=1"]),
    ("host not in the job's nodes", ["serve", "--model", "MODEL", "--interface", "lo"], {**JOB, "SLURMD_NODENAME": "login1"}, 13, ["this host (login1) is not one of the job's nodes (gpu01, gpu02)", "srun"]),
    ("model not visible in the container", ["plan", "--model", "/no/such/model"], {"APPTAINER_CONTAINER": "/images/vllm-hpc.sif"}, 3, ["not visible inside the container /images/vllm-hpc.sif", "--bind /no/such/model"]),
    ("model config.json a broken link", ["plan", "--model", "SNAPSHOT"], {}, 3, ["config.json is a link to ../../blobs/", "models--ORG--NAME"]),
    ("a second serve step of a job", ["serve", "--model", "MODEL", "--interface", "lo"], {**JOB, "SLURM_STEP_ID": "1", "SECONDSTEP": "1"}, 13, ["step 0 of job 31 is already starting", "scancel 31.0", "a job of its own"]),
    ("launch: GPUs the configuration cannot use", ["launch", "--model", "MODEL", "--nodes", "2", "--gpus-per-node", "0", "--dry-run"], {}, 4, ["needs GPUs on every node", "--gpus-per-node N"]),
    ("launch: a bad serve option", ["launch", "--model", "MODEL", "--dry-run", "--max-modl-len", "3"], {}, 2, ["No such option: --max-modl-len"]),
    ("cleanup age not an age", ["cleanup", "--older-than", "soon"], {}, 2, ["'soon' is not an age", "7d"]),
    ("privileged port", ["serve", "--model", "MODEL", "--interface", "lo", "--host", "127.0.0.1", "--port", "80", "--no-api-key"], {"NOPRIV": "1"}, 5, ["port 80 on 127.0.0.1 needs a privilege", "1024 or above"]),
]


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    key = tmp_path / "key"
    key.write_text("secret-key-value\n")
    key.chmod(0o644)
    # A Hugging Face cache snapshot whose blobs are not visible (not bound into a container).
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to("../../blobs/0f1e2d")
    return {"MODEL": str(model), "EMPTY": str(tmp_path / "empty"), "OPENKEY": str(key), "SNAPSHOT": str(snapshot)}


@pytest.mark.parametrize("name, args, env_extra, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, args, env_extra, code, words, files, tmp_path):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.update({k: v for k, v in env_extra.items() if k not in ("NETNS", "NOPRIV", "SECONDSTEP")})
    if env_extra.get("SECONDSTEP"):
        # Step 0 of job 31 started serving a moment ago; this is step 1.
        job = tmp_path / ".vllm-hpc" / "jobs" / "31"
        job.mkdir(parents=True, mode=0o700)
        (job / "state.json").write_text(json.dumps({"phase": "starting", "run": "0.0", "started_epoch": time.time()}))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    files = {**files, "BUSY": str(busy.getsockname()[1])}
    argv = [sys.executable, "-m", "vllm_hpc", *[files.get(a, a) for a in args]]
    if env_extra.get("NETNS"):
        # A fresh network namespace has only a loopback interface, and it is down.
        if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
            pytest.skip("cannot create a network namespace here")
        argv = ["unshare", "--net", *argv]
    if env_extra.get("NOPRIV"):
        # As a user without CAP_NET_BIND_SERVICE, which root here has: drop it.
        if subprocess.run(["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", "true"], capture_output=True).returncode != 0:
            pytest.skip("cannot drop capabilities here")
        argv = ["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    finally:
        busy.close()
    # serve may print progress lines first; the error is one line, the last.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vllm-hpc: error: ")]
    assert result.returncode == code, result.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "secret-key-value" not in result.stderr + result.stdout
    children = subprocess.run(["pgrep", "-f", "--", f"--model {files['MODEL']}"], capture_output=True, text=True).stdout.split()
    assert children == [], "a process of the failed command is still running"


def test_readme_table_lists_every_case():
    text = README.read_text()
    table = {m.group(1).strip(): int(m.group(2)) for m in re.finditer(r"^\| ([^|]+?) \| `[^`]*` \| (\d+) \|", text, re.M)}
    assert table, "README has no bad-input table"
    for name, _, _, code, _ in CASES:
        assert table.get(name) == code, f"README row for {name!r} missing or with another exit code"
    assert len(table) >= 12
