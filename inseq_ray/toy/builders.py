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
from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

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
    activation: str = "gelu_new",
    max_positions: int = 128,
    init_std: float = 0.02,
) -> Path:
    """Build and save a seeded random ``gpt2`` or ``bart`` model with its tokenizer; returns the path."""
    path = Path(path)
    torch.manual_seed(seed)
    if kind == "gpt2":
        tokenizer = train_tokenizer(vocab_size)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max_positions,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            activation_function=activation,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            initializer_range=init_std,
        )
        model = GPT2LMHeadModel(config)
    elif kind == "bart":
        tokenizer = train_tokenizer(vocab_size, eos_template=True)
        config = BartConfig(
            vocab_size=len(tokenizer),
            d_model=hidden,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=hidden * 4,
            decoder_ffn_dim=hidden * 4,
            max_position_embeddings=max_positions,
            activation_function=activation,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            forced_eos_token_id=None,
            scale_embedding=True,
            init_std=init_std,
        )
        model = BartForConditionalGeneration(config)
    elif kind == "marian":  # Marian: sinusoidal positions, final_logits_bias, decoder starts from <pad>
        from transformers import MarianConfig, MarianMTModel

        tokenizer = train_tokenizer(vocab_size, eos_template=True)
        config = MarianConfig(
            vocab_size=len(tokenizer),
            d_model=hidden,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=hidden * 2,
            decoder_ffn_dim=hidden * 2,
            max_position_embeddings=max_positions,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
            forced_eos_token_id=None,
            init_std=init_std,
            activation_function="swish",
        )
        model = MarianMTModel(config)
        with torch.no_grad():  # a non-zero bias, so that the split head must add it to match
            model.final_logits_bias.normal_(0, 1)
    elif kind == "llama":  # Llama-style: BOS added, RMSNorm, rotary positions, SiLU
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = train_tokenizer(vocab_size, bos_template=True)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=max_positions,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            initializer_range=init_std,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    elif kind == "t5":  # T5: relative attention bias, decoder output rescaled before the tied LM head
        from transformers import T5Config, T5ForConditionalGeneration

        tokenizer = train_tokenizer(vocab_size, eos_template=True)
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=hidden * 2,
            num_layers=layers,
            num_heads=heads,
            pad_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=0,
            initializer_factor=init_std * 5,
            tie_word_embeddings=True,
            feed_forward_proj="relu",
        )
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(f"Unknown toy model kind {kind!r}; valid: bart, gpt2, llama, marian, t5.")
    model.eval()
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TOY_BUILDERS = {
    "gpt2": lambda path: build_tiny_model("gpt2", path, layers=2, hidden=64, heads=4, init_std=0.2),
    "bart": lambda path: build_tiny_model("bart", path, layers=2, hidden=64, heads=4, init_std=0.2),
}
TOY_VERSION = "1"


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
