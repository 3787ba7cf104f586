"""Half precision next to float32: do bf16 and fp16 rank input tokens as fp32 does?

    python benchmarks/precision_bench.py --model gpt2-small --sentences 8

The model (``engine_bench.build``: random weights, GPT-2-small size, so p(next token) is about 2e-5 as for a
forced target) is saved once and loaded three times with ``dtype=``. For saliency and integrated gradients,
every step of every sentence compares the L2-per-token scores of each half dtype with float32's: top-1
agreement and Spearman (mean, min). ``naive fp16`` is the plain float16 backward of p (captum's Saliency on
each prefix, as Inseq runs it): what the engine's gradient scaling avoids.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from engine_bench import build, corpus
from scipy.stats import spearmanr

import inseq_ray

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def scores(path: str, dtype: str, method: str, src: list[str], tgt: list[str]) -> list[torch.Tensor]:
    """Per sentence (L, T) L2 scores of the target side."""
    am = inseq_ray.load_model(path, method, device=DEVICE, dtype=dtype)
    args = {"n_steps": 20} if method == "integrated_gradients" else {}
    out = am.attribute(src, tgt, show_progress=False, batch_size=4, attribution_args=args)
    return [s.target_attributions.float().norm(dim=-1) for s in out.sequence_attributions]


def naive_fp16(path: str, src: list[str], tgt: list[str]) -> list[torch.Tensor]:
    from tests.naive import naive_attribute

    am = inseq_ray.load_model(path, "saliency", device=DEVICE, dtype="fp16")
    return [naive_attribute(am, s, t, "saliency", True)[1].float().norm(dim=-1) for s, t in zip(src, tgt)]


def agreement(ref: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float, float]:
    """(top-1 agreement, mean Spearman, min Spearman) over every step of every sentence."""
    top, rho = [], []
    for a, b in zip(ref, other, strict=True):
        for t in range(a.shape[1]):
            keep = ~torch.isnan(a[:, t])
            x, y = a[keep, t].numpy(), b[keep, t].numpy()
            top.append(x.argmax() == y.argmax())
            rho.append(spearmanr(x, y).statistic)
    return float(np.mean(top)), float(np.nanmean(rho)), float(np.nanmin(rho))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-small", choices=["tiny-gpt2", "gpt2-small"])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--methods", nargs="*", default=["saliency", "integrated_gradients"])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"])
    args = parser.parse_args()
    model, tok = build(args.model)
    src, tgt = corpus(args.sentences, enc_dec=False)
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        tok.save_pretrained(path)
        for method in args.methods:
            ref = scores(path, "fp32", method, src, tgt)
            for dtype in args.dtypes:
                top, mean, low = agreement(ref, scores(path, dtype, method, src, tgt))
                print(f"{method:22s} {dtype}: top-1 {top:.1%}  Spearman mean {mean:.4f} min {low:.4f}")
        top, mean, low = agreement(scores(path, "fp32", "saliency", src, tgt), naive_fp16(path, src, tgt))
        print(
            f"{'saliency':22s} naive fp16 (plain float16 backward): top-1 {top:.1%}  Spearman mean {mean:.4f} "
            f"min {low:.4f}"
        )


if __name__ == "__main__":
    main()
