"""Write a random-weight Llama of about 1 B parameters (bf16) for GPU tests.

    python3 tests/gpu/make_model.py OUTDIR [--layers 20] [--vocab 32000]

Architecture: hidden size 2048, 32 attention heads of 64, 8 KV heads, MLP 5632,
20 layers, untied embeddings, vocabulary 32000: 1.01 B parameters, 2.0 GB of
safetensors. The weights are random (seeded), so replies are gibberish, but every
kernel, memory size and step a real model of that size takes is exercised.

The tokenizer is a real byte-level BPE tokenizer trained here on a generated
corpus (made-up words with a Zipf-like frequency, numbers, punctuation), saved
with a Jinja chat template, so chat completions and `vllm bench serve` work.
Nothing is downloaded: this needs torch, transformers and tokenizers only.
Weights are initialised on a GPU when one is visible (seconds), else on the CPU.

A second run with the same parameters leaves OUTDIR untouched (stamp file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

SEED = 20261128
DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 20,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
}
CORPUS_WORDS = 1_500_000
LEXICON_SIZE = 60_000

# The same special tokens and chat template as the test bed's tiny model.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bed"))
from tiny_model import BOS, CHAT_TEMPLATE, EOS, PAD, ROLE_TOKENS, SPECIAL_TOKENS  # noqa: E402,F401
STAMP = ".make-model.json"
FORMAT_VERSION = 1


def generate_corpus(seed: int = SEED, words: int = CORPUS_WORDS, lexicon_size: int = LEXICON_SIZE) -> list[str]:
    """Deterministic text lines: made-up words drawn with a Zipf-like law, numbers and punctuation."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "fl", "gr", "pl", "qu", "sh", "st", "th", "tr", "str"]  # fmt: skip
    vowels = ["a", "e", "i", "o", "u", "y", "ai", "ea", "ee", "ie", "oa", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "rt", "st", "ck", "x"]
    lexicon: list[str] = []
    seen: set[str] = set()
    while len(lexicon) < lexicon_size:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))))
        if word not in seen:
            seen.add(word)
            lexicon.append(word)
    # Zipf-like ranks: weight 1/(rank+10) over the lexicon.
    weights = [1.0 / (rank + 10) for rank in range(lexicon_size)]
    drawn = rng.choices(lexicon, weights=weights, k=words)
    punctuation = [".", ",", ";", ":", "!", "?", " -", " (", ")", '"', "'"]
    lines, line, i = [], [], 0
    while i < len(drawn):
        length = rng.randint(4, 18)
        sentence = drawn[i : i + length]
        i += length
        if rng.random() < 0.15:
            sentence.insert(rng.randrange(len(sentence) + 1), str(rng.choice((rng.randint(0, 100), rng.randint(0, 99999), round(rng.random() * 100, 2)))))
        text = " ".join(sentence)
        text = text[:1].upper() + text[1:] + rng.choice(punctuation[:6])
        line.append(text)
        if len(line) >= rng.randint(1, 6):
            lines.append(" ".join(line))
            line = []
    if line:
        lines.append(" ".join(line))
    return lines


def build_parameters(arch: dict[str, int]) -> dict[str, object]:
    """Everything that decides the output; its hash is the stamp."""
    return {
        "format": FORMAT_VERSION,
        "seed": SEED,
        "arch": arch,
        "corpus_words": CORPUS_WORDS,
        "lexicon_size": LEXICON_SIZE,
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "dtype": "bfloat16",
    }


def build_stamp(arch: dict[str, int]) -> str:
    return hashlib.sha256(json.dumps(build_parameters(arch), sort_keys=True).encode()).hexdigest()


def is_current(outdir: Path, arch: dict[str, int]) -> bool:
    try:
        return json.loads((outdir / STAMP).read_text())["stamp"] == build_stamp(arch) and (outdir / "config.json").is_file()
    except (OSError, ValueError, KeyError):
        return False


def train_tokenizer(vocab_size: int):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(generate_corpus(), trainer=trainer)
    return tokenizer


def write_model(outdir: Path, arch: dict[str, int]) -> dict[str, object]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    started = time.monotonic()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(arch["vocab_size"]),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=arch["max_position_embeddings"],
    )
    tokenizer_s = time.monotonic() - started
    if len(tokenizer) > arch["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, more than the model's {arch['vocab_size']}")
    config = LlamaConfig(
        **arch,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(SEED)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    parameters = sum(p.numel() for p in model.parameters())

    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=outdir.name + ".", dir=outdir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {"stamp": build_stamp(arch), "parameters": build_parameters(arch), "num_parameters": parameters, "tokens": len(tokenizer)}
        (tmp / STAMP).write_text(json.dumps(info, indent=1) + "\n")
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if outdir.exists():
            shutil.rmtree(outdir)
        tmp.rename(outdir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    del model
    return {"num_parameters": parameters, "tokens": len(tokenizer), "tokenizer_s": round(tokenizer_s, 1), "device": device}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="directory to write the model into")
    parser.add_argument("--layers", type=int, default=DEFAULTS["num_hidden_layers"], help="number of decoder layers [20]")
    parser.add_argument("--vocab", type=int, default=DEFAULTS["vocab_size"], help="vocabulary size [32000]")
    parser.add_argument("--force", action="store_true", help="rewrite even if current")
    args = parser.parse_args(argv)
    outdir: Path = args.outdir.resolve()
    arch = dict(DEFAULTS, num_hidden_layers=args.layers, vocab_size=args.vocab)

    if not args.force and is_current(outdir, arch):
        print(f"make_model: {outdir} is current, nothing to do")
        return 0
    started = time.monotonic()
    info = write_model(outdir, arch)
    size = sum(p.stat().st_size for p in outdir.iterdir() if p.is_file())
    print(
        f"make_model: wrote {outdir}: {info['num_parameters'] / 1e9:.3f} B parameters, {info['tokens']} tokens, "
        f"{size / 1e9:.2f} GB in {time.monotonic() - started:.1f}s (tokenizer {info['tokenizer_s']}s, weights on {info['device']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
