"""Tiny, deterministic, locally built models for tests, demos and benchmarks (no hub access).

``build_tiny_model("gpt2", path)`` trains a BPE tokenizer on a synthetic corpus, builds a seeded
random model from a transformers config and ``save_pretrained``s both, so callers exercise the
real ``load_model`` path.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    "the a one every some cat dog bird fish child teacher farmer doctor red blue green small big old young "
    "happy sees eats likes finds takes holds reads writes house tree river book apple bread garden city "
    "quickly slowly today here there and but with near under over"
).split()


def synthetic_sentences(n: int, seed: int = 0, min_words: int = 3, max_words: int = 12) -> list[str]:
    """``n`` reproducible sentences of random words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def train_tokenizer(
    vocab_size: int = 500, bos_template: bool = False, eos_template: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the synthetic corpus."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(synthetic_sentences(2000, seed=1), trainer=trainer)
    single = " ".join((["<s>"] if bos_template else []) + ["$A"] + (["</s>"] if eos_template else []))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, ids[t]) for t in ("<s>", "</s>")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny_model(
    kind: str,
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    vocab_size: int = 500,
    seed: int = 0,
    activation: str | None = None,
    max_positions: int = 128,
    init_std: float = 0.02,
) -> Path:
    """Build and save a seeded random model of family ``kind`` (see :mod:`inseq_ray.toy.families`)
    with a BPE tokenizer trained on the synthetic corpus; returns the path."""
    from inseq_ray.toy.families import Size, build_model, get_family

    path = Path(path)
    fam = get_family(kind)
    tokenizer = train_tokenizer(vocab_size, bos_template=fam.bos_template, eos_template=fam.encoder_decoder)
    size = Size(len(tokenizer), layers, hidden, heads, max_positions, init_std, activation)
    torch.manual_seed(seed)
    model = build_model(kind, size)
    bias = getattr(model, "final_logits_bias", None)
    if isinstance(bias, torch.Tensor):  # real checkpoints' biases are zero; a non-zero one must be added to match
        with torch.no_grad():
            bias.normal_(0, 1)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CHAT_TEMPLATE = (  # a ChatML-style template, so that chat corpora can be tried on toy:gpt2
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chat_gpt2(path: Path) -> Path:
    """The toy GPT-2, its tokenizer carrying :data:`CHAT_TEMPLATE`."""
    from transformers import AutoTokenizer

    build_tiny_model("gpt2", path, layers=2, hidden=64, heads=4, init_std=0.2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return Path(path)


TOY_BUILDERS = {
    "gpt2": _chat_gpt2,
    "bart": lambda path: build_tiny_model("bart", path, layers=2, hidden=64, heads=4, init_std=0.2),
}
TOY_VERSION = "3"  # bumped when a builder changes, so cached toy models are rebuilt


def cache_root() -> Path:
    """Where built toy models live: ``$INSEQ_RAY_CACHE`` or ``~/.cache/inseq_ray``."""
    import os

    return Path(os.environ.get("INSEQ_RAY_CACHE", Path.home() / ".cache" / "inseq_ray"))


TRAINED = ("translator", "copier")  # shipped in inseq_ray/data/toy, rebuilt by python -m inseq_ray.toy.train


def resolve_toy(name: str) -> str:
    """``toy:<kind>`` -> a local folder holding that model (shipped, or built deterministically on first use)."""
    import shutil
    import tempfile

    kind = name.removeprefix("toy:")
    if kind in TRAINED:
        return str(Path(__file__).parent.parent / "data" / "toy" / kind)
    if kind not in TOY_BUILDERS:
        valid = ", ".join("toy:" + k for k in sorted([*TOY_BUILDERS, *TRAINED]))
        raise ValueError(f"Unknown toy model {name!r}; valid: {valid}.")
    target = cache_root() / "toy" / f"{kind}-v{TOY_VERSION}"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{kind}-"))
        TOY_BUILDERS[kind](tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
