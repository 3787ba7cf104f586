"""Engine speed next to the naive per-step reference (Inseq's compute model), same run, same model.

    python benchmarks/engine_bench.py --model gpt2-small --method saliency --batch-size 32 --dtype fp32

Models are built locally from configs with random weights (no hub): ``gpt2-small`` (12 layers, 768
hidden, 50,257 vocab), ``bart-base`` (6+6 layers, 768 hidden), ``tiny-gpt2``/``tiny-bart``.
Decoder-only: prompt = first 4 words, forced target = the whole sentence (~20 attributed tokens).
Encoder-decoder: source sentence -> target sentence (forced).
Prints sentences/s and generated (target) tokens/s for both systems.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inseq_ray
from inseq_ray.toy import synthetic_sentences, train_tokenizer


def build(name: str):
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if name.endswith("gpt2") or name == "gpt2-small":
        tok = train_tokenizer(500)
        big = name == "gpt2-small"
        cfg = GPT2Config(
            vocab_size=50257 if big else len(tok),
            n_embd=768 if big else 64,
            n_layer=12 if big else 2,
            n_head=12 if big else 4,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        return GPT2LMHeadModel(cfg).eval(), tok
    tok = train_tokenizer(500, eos_template=True)
    big = name == "bart-base"
    d = 768 if big else 64
    cfg = BartConfig(
        vocab_size=50265 if big else len(tok),
        d_model=d,
        encoder_layers=6 if big else 2,
        decoder_layers=6 if big else 2,
        encoder_attention_heads=12 if big else 4,
        decoder_attention_heads=12 if big else 4,
        encoder_ffn_dim=4 * d,
        decoder_ffn_dim=4 * d,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return BartForConditionalGeneration(cfg).eval(), tok


def corpus(n: int, enc_dec: bool) -> tuple[list[str], list[str]]:
    sents = synthetic_sentences(n, seed=7, min_words=20, max_words=24)
    if enc_dec:
        return sents, synthetic_sentences(n, seed=8, min_words=20, max_words=24)
    return [" ".join(s.split()[:4]) for s in sents], sents


def n_target_tokens(out) -> int:
    return sum(s.n_steps for s in out)


def time_engine(am, src, tgt, args) -> tuple[float, int]:
    kw = {
        "method": args.method,
        "batch_size": args.batch_size,
        "show_progress": False,
        "vjp": args.vjp,
        "step_blocks": args.step_blocks,
    }
    if args.method in ("integrated_gradients", "sequential_integrated_gradients"):
        kw.update(n_steps=args.ig_steps, internal_batch_size=args.internal_batch_size)
    if args.patterns_per_forward:
        kw.update(patterns_per_forward=args.patterns_per_forward)
    am.attribute(src[: args.batch_size], tgt[: args.batch_size], **kw)  # warm-up
    sync(am)
    t0 = time.perf_counter()
    out = am.attribute(src, tgt, **kw)
    sync(am)
    return time.perf_counter() - t0, n_target_tokens(out)


def time_naive(am, src, tgt, args) -> tuple[float, int]:
    from tests.naive import naive_attribute, naive_lime, naive_sequential_ig, naive_value_zeroing

    kw = {"n_steps": args.ig_steps} if args.method == "integrated_gradients" else {}
    tokens = 0
    t0 = time.perf_counter()
    for s, t in zip(src, tgt, strict=True):
        if args.method == "value_zeroing":  # per step, per layer, per token: one forward each
            side = "source" if am.is_encoder_decoder else "target"
            a_src, a_tgt = naive_value_zeroing(am, s, t, side), None
        elif args.method == "lime":  # n_samples forwards + one ridge fit per step
            n_tok = len(am.tokenizer(s if am.is_encoder_decoder else t)["input_ids"])
            keep = {("source" if am.is_encoder_decoder else "target"): (torch.rand(50, n_tok) >= 0.3).float()}
            a_src, a_tgt = naive_lime(am, s, t, keep, False, am.tokenizer.unk_token_id)
        elif args.method == "sequential_integrated_gradients":  # Inseq's op on every prefix
            a_src, a_tgt = naive_sequential_ig(am, s, t, False, args.ig_steps)
        else:
            a_src, a_tgt = naive_attribute(am, s, t, args.method, not am.is_encoder_decoder, **kw)
        tokens += (a_src if a_src is not None else a_tgt).shape[1]
    sync(am)
    return time.perf_counter() - t0, tokens


def sync(am) -> None:
    if am.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small", choices=["gpt2-small", "bart-base", "tiny-gpt2", "tiny-bart"])
    p.add_argument("--method", default="saliency")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--sentences", type=int, default=64, help="sentences for the engine")
    p.add_argument("--naive-sentences", type=int, default=8, help="sentences for the naive reference (0: skip)")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--internal-batch-size", type=int, default=None)
    p.add_argument("--patterns-per-forward", type=int, default=None, help="occlusion / value_zeroing stacking")
    p.add_argument("--vjp", default="loop", choices=["loop", "batched"])
    p.add_argument("--step-blocks", type=int, default=None, help="forwards per batch (default: 1 on GPUs, 4 on CPUs)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = build(args.model)
    am = inseq_ray.load_model(
        model, tokenizer=tok, device=args.device, dtype=None if args.dtype == "fp32" else args.dtype
    )
    src, tgt = corpus(max(args.sentences, args.naive_sentences), am.is_encoder_decoder)
    dev = torch.cuda.get_device_name() if am.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"# {args.model} {args.method} dtype={args.dtype} batch={args.batch_size} vjp={args.vjp} step_blocks={args.step_blocks} on {dev}"
    )
    print(f"{'system':<28}{'sentences':>10}{'seconds':>10}{'sent/s':>10}{'tok/s':>10}")
    rows = [
        ("engine (one forward)", *time_engine(am, src[: args.sentences], tgt[: args.sentences], args), args.sentences)
    ]
    if args.naive_sentences:
        n = args.naive_sentences
        rows.append(("naive per-step reference", *time_naive(am, src[:n], tgt[:n], args), n))
    for name, secs, toks, n in rows:
        print(f"{name:<28}{n:>10}{secs:>10.2f}{n / secs:>10.2f}{toks / secs:>10.1f}")
    if len(rows) == 2:
        print(f"speed-up (sent/s): {(rows[0][3] / rows[0][1]) / (rows[1][3] / rows[1][1]):.2f}x")


if __name__ == "__main__":
    main()
