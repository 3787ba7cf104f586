"""Contrastive saliency next to plain saliency, same model, same sentences, same batch.

    python benchmarks/contrast_bench.py --model gpt2-small --sentences 32 --batch-size 16

Three runs per repeat, alternating: plain (``attributed_fn="probability"``, step score ``probability``),
contrastive attribution (``attributed_fn="contrast_prob_diff"``: the contrast token is compared on the
original forward, so no extra forward), and contrastive attribution plus contrastive step scores
(``contrast_prob_diff``, ``pcxmi``, ``kl_divergence``: one extra no-grad forward of the contrast inputs per
batch). Contrast targets differ from the targets in their last word (same length in words). Models are
built as in ``engine_bench.py`` (random weights, no hub). Prints the best of ``--repeats`` and the ratios;
the target is contrastive <= 1.3x plain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from engine_bench import build, corpus, sync

import inseq_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small", choices=["gpt2-small", "bart-base", "tiny-gpt2", "tiny-bart"])
    p.add_argument("--sentences", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    model, tok = build(args.model)
    am = inseq_ray.load_model(model, tokenizer=tok, device=args.device)
    src, tgt = corpus(args.sentences, am.is_encoder_decoder)
    contrast = [t.rsplit(" ", 1)[0] + " " + ("dog" if not t.endswith("dog") else "cat") for t in tgt]
    base = {"batch_size": args.batch_size, "show_progress": False}
    runs = {
        "plain saliency": {"step_scores": ["probability"]},
        "contrastive attribution": {
            "attributed_fn": "contrast_prob_diff",
            "contrast_targets": contrast,
            "step_scores": ["probability"],
        },
        "contrastive + contrast scores": {
            "attributed_fn": "contrast_prob_diff",
            "contrast_targets": contrast,
            "step_scores": ["probability", "contrast_prob_diff", "pcxmi", "kl_divergence"],
        },
    }
    am.attribute(src[: args.batch_size], tgt[: args.batch_size], **base)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, kw in runs.items():
            sync(am)
            t0 = time.perf_counter()
            am.attribute(src, tgt, **base, **kw)
            sync(am)
            times[name].append(time.perf_counter() - t0)
    dev = torch.cuda.get_device_name() if am.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {args.model}, {args.sentences} sentences, batch {args.batch_size}, saliency, on {dev}")
    plain = min(times["plain saliency"])
    for name, ts in times.items():
        best = min(ts)
        print(f"{name:<32}{best:8.2f} s  {args.sentences / best:7.2f} sent/s  {best / plain:5.2f}x plain")


if __name__ == "__main__":
    main()
