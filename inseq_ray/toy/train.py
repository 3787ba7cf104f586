"""Train the toy models deterministically on 2 CPU cores (a few minutes): ``python -m inseq_ray.toy.train OUT``.

- ``translator``: a tiny BART (word-level tokenizer) on the synthetic language pair of
  :mod:`inseq_ray.toy.tasks`.
- ``copier``: a tiny GPT-2 on the copy task.
Same code + same seed + 1 thread -> identical weights.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from inseq_ray.toy.tasks import COPY_ALPHABET, LEXICON, copy_corpus, translation_corpus

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def word_tokenizer(words: list[str], eos_template: bool) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos_template:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _batches(items: list, size: int, rng: random.Random):
    items = list(items)
    rng.shuffle(items)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def train_translator(out: Path, steps: int = 1500, seed: int = 0) -> Path:
    """A 2+2-layer BART (d=64) on the synthetic pair; ~1-2 minutes on 2 cores."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = word_tokenizer(list(LEXICON) + list(LEXICON.values()), eos_template=True)
    cfg = BartConfig(
        vocab_size=len(tok),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=True,
    )
    model = BartForConditionalGeneration(cfg)
    data = translation_corpus(4000, seed=seed)
    _fit(model, lambda b: _seq2seq_batch(tok, b), data, steps, rng)
    return _save(model, tok, out, max_new_tokens=24)


def _seq2seq_batch(tok, batch):
    enc = tok([s for s, _, _ in batch], return_tensors="pt", padding=True)
    labels = tok(text_target=[t for _, t, _ in batch], return_tensors="pt", padding=True)["input_ids"]
    labels[labels == tok.pad_token_id] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def train_copier(out: Path, steps: int = 1500, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (d=64) on the copy task; loss on the copied part only."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = word_tokenizer(["copy:", "=", *COPY_ALPHABET], eos_template=False)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg)
    data = copy_corpus(4000, seed=seed)
    _fit(model, lambda b: _copy_batch(tok, b), data, steps, rng)
    return _save(model, tok, out, max_new_tokens=8)


def _copy_batch(tok, batch):
    full = tok([f + " </s>" for _, f, _ in batch], return_tensors="pt", padding=True)
    labels = full["input_ids"].clone()
    for i, (p, _, _) in enumerate(batch):
        labels[i, : len(tok(p)["input_ids"])] = -100
    labels[full["attention_mask"] == 0] = -100
    return {"input_ids": full["input_ids"], "attention_mask": full["attention_mask"], "labels": labels}


def _fit(model, make_batch, data, steps: int, rng: random.Random) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical float reductions on every machine
    try:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        step = 0
        while step < steps:
            for batch in _batches(data, 64, rng):
                loss = model(**make_batch(batch)).loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                if step >= steps:
                    break
        model.eval()
    finally:
        torch.set_num_threads(threads)


def _save(model, tok, out: Path, max_new_tokens: int) -> Path:
    out = Path(out)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.pad_token_id = 0
    model.generation_config.num_beams = 1
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


TRAINERS = {"translator": train_translator, "copier": train_copier}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", help="folder to write <name>/ model folders into")
    p.add_argument("--models", nargs="*", default=list(TRAINERS))
    p.add_argument("--steps", type=int, default=1500)
    args = p.parse_args()
    for name in args.models:
        path = TRAINERS[name](Path(args.out) / name, steps=args.steps)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
