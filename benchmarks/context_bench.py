"""Context reliance (PECoRe): inseq_ray's batched ``attribute_context`` next to Inseq 0.7.1's command on the same
examples, same model, same arguments.

    python benchmarks/context_bench.py --model gpt2-small --examples 16 --batch-size 16

Each example: a context sentence, a current prompt and a forced current output (20-24 words each, synthetic),
default arguments (KL divergence CTI, mean + 1 std selection, saliency CCI). Inseq runs one example at a time
(its command has no batch); inseq_ray runs them as one list. Models are built as in ``engine_bench.py`` (random
weights, no hub) and saved once so both libraries load the same files. Prints the best of ``--repeats``:
examples/s of each, the speed-up, and that both selected the same number of tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from engine_bench import build, corpus

import inseq_ray
from inseq_ray.context import ContextArgs, attribute_context


def examples(n: int) -> list[dict]:
    context, current = corpus(n, enc_dec=True)
    return [
        {"input_context_text": c, "input_current_text": " ".join(t.split()[:6]),
         "output_current_text": " ".join(t.split()[6:14])}
        for c, t in zip(context, current, strict=True)
    ]  # fmt: skip


def run_inseq(path: str, items: list[dict]) -> tuple[float, int]:
    import inseq
    from inseq.commands.attribute_context.attribute_context import attribute_context_with_model
    from inseq.commands.attribute_context.attribute_context_args import AttributeContextArgs

    model = inseq.load_model(path, "saliency")
    start, selected = time.perf_counter(), 0
    for kw in items:
        out = attribute_context_with_model(AttributeContextArgs(model_name_or_path=path, show_viz=False, **kw), model)
        selected += len(out.cci_scores)
    return time.perf_counter() - start, selected


def run_ours(am, items: list[dict], batch_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    outs = attribute_context(am, [ContextArgs(**kw) for kw in items], batch_size=batch_size)
    return time.perf_counter() - start, sum(len(o.cci_scores) for o in outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small", choices=["gpt2-small", "bart-base", "tiny-gpt2", "tiny-bart"])
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-inseq", action="store_true", help="time inseq_ray only")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    model, tok = build(args.model)
    items = examples(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        am = inseq_ray.load_model(tmp, "saliency", device="cpu")
        run_ours(am, items[:2], args.batch_size)  # warm-up
        ours = min((run_ours(am, items, args.batch_size) for _ in range(args.repeats)), key=lambda r: r[0])
        theirs = (
            None if args.no_inseq else min((run_inseq(tmp, items) for _ in range(args.repeats)), key=lambda r: r[0])
        )
    dev = f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {args.model}, {args.examples} examples, batch {args.batch_size}, saliency CCI, on {dev}")
    print(f"inseq_ray  {ours[0]:8.2f} s  {args.examples / ours[0]:7.2f} examples/s  ({ours[1]} tokens attributed)")
    if theirs is not None:
        print(
            f"inseq      {theirs[0]:8.2f} s  {args.examples / theirs[0]:7.2f} examples/s  ({theirs[1]} tokens attributed)"
        )
        print(f"speed-up   {theirs[0] / ours[0]:.1f}x")


if __name__ == "__main__":
    main()
