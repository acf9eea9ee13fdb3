"""Write a tiny random-weight Llama model that vLLM can serve, for the test bed.

    python tests/bed/tiny_model.py OUTDIR

The model has 2 layers, hidden size 256, 4 attention heads of 64, 2 KV heads and
float32 weights (about 5 MB). Its byte-level BPE tokenizer is trained here from a
fixed text, and a Jinja chat template is saved with it, so chat completions work.
Nothing is downloaded. The output is deterministic; a second run with the same
parameters leaves OUTDIR untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 1024  # an upper bound: the small corpus yields about 540 tokens
HIDDEN_SIZE = 256
INTERMEDIATE_SIZE = 512
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 2048

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' + '\\n' }}{% endif %}"
)

STAMP = ".tiny-model.json"

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token.
Slurm allocates nodes to jobs; each node runs one task of the job step.
Ray connects the nodes of a cluster; the head keeps the global control store.
vLLM serves models through an OpenAI compatible HTTP interface.
You are a helpful assistant. Say hello. Hello! How can I help you today?
What is the capital of France? The capital of France is Paris.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 2.71 42.
Punctuation and symbols: , . ; : ! ? ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ ' "
"""


def build_parameters() -> dict[str, object]:
    """Everything that decides the output; its hash is the idempotence stamp."""
    return {
        "seed": SEED,
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "corpus_sha256": hashlib.sha256(_CORPUS.encode()).hexdigest(),
        # A tokenizer saved by transformers 5 names a class 4.x cannot load (and the
        # reverse): the model is made by, and remade for, the transformers that serves it.
        "transformers": _transformers_version(),
    }


def _transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "none"


def build_stamp() -> str:
    return hashlib.sha256(json.dumps(build_parameters(), sort_keys=True).encode()).hexdigest()


def is_current(outdir: Path) -> bool:
    stamp = outdir / STAMP
    try:
        return json.loads(stamp.read_text())["stamp"] == build_stamp()
    except (OSError, ValueError, KeyError):
        return False


def train_tokenizer():  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeated lines give the merges stable, distinct counts.
    lines = [line for line in _CORPUS.splitlines() if line]
    tokenizer.train_from_iterator(lines * 8, trainer=trainer)
    return tokenizer


def write_model(outdir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    transformers_logging.disable_progress_bar()

    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=outdir.name + ".", dir=outdir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / STAMP).write_text(
            json.dumps({"stamp": build_stamp(), "parameters": build_parameters()}, indent=1)
            + "\n"
        )
        # mkdtemp and safetensors create private modes; the model is not secret.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if outdir.exists():
            shutil.rmtree(outdir)
        tmp.rename(outdir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="directory to write the model into")
    parser.add_argument("--force", action="store_true", help="rewrite even if current")
    args = parser.parse_args(argv)
    outdir: Path = args.outdir.resolve()

    if not args.force and is_current(outdir):
        print(f"tiny model: {outdir} is current, nothing to do")
        return 0
    started = time.monotonic()
    write_model(outdir)
    size = sum(p.stat().st_size for p in outdir.iterdir() if p.is_file())
    print(
        f"tiny model: wrote {outdir} ({size / 1e6:.1f} MB) "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
