"""Peak memory per context length: inseq_ray next to Inseq 0.7.1 and next to the memory model's prediction.

    python benchmarks/memory_bench.py --lengths 1024 2048 4096 8192

A Llama-style model (8 layers, hidden 512, 8 heads, 4 KV heads, 32,000-token vocabulary, random weights, saved
once) attributes the last ``--steps`` tokens of one text of each length. Each (library, method, length) runs in
a fresh process; the figure is its peak RSS during ``attribute`` less its RSS before (the loaded model), so it
is the attribution's own memory on this CPU. ``predicted`` is :func:`inseq_ray.memory.predict_peak` less the
weights, for the same batch. Methods: saliency, integrated gradients (``--ig-steps`` points, two per forward:
``internal_batch_size=2`` in both libraries) and attention (eager, every layer's weights: quadratic by nature).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def build(path: str, max_len: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from inseq_ray.toy.builders import train_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=max_len + 64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    train_tokenizer(500, bos_template=True).save_pretrained(path)


def text_of(tokenizer, length: int) -> str:
    """A text of about ``length`` tokens (random words)."""
    from inseq_ray.toy.builders import synthetic_sentences

    text = " ".join(synthetic_sentences(length // 3 + 10, seed=7))
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:length])


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one(path: str, lib: str, method: str, length: int, steps: int, ig_steps: int) -> dict:
    """In this process: load, attribute once, report peak RSS growth (and our prediction)."""
    args = {"n_steps": ig_steps, "internal_batch_size": 2} if method == "integrated_gradients" else {}
    if lib == "inseq":
        import inseq

        model = inseq.load_model(path, method)
        tok = model.tokenizer
    else:
        import inseq_ray

        model = inseq_ray.load_model(path, method, device="cpu")
        tok = model.tokenizer
    full = text_of(tok, length)
    ids = tok(full)["input_ids"]
    prompt = tok.decode(ids[1 : len(ids) - steps])
    before = rss()
    if lib == "inseq":
        model.attribute(prompt, full, show_progress=False, **args)
    else:
        model.attribute(prompt, full, show_progress=False, step_blocks=1, attribution_args=args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"lib": lib, "method": method, "length": len(ids), "peak_growth": peak - before}
    if lib == "ours":
        from inseq_ray.memory import MemoryProfile, predict_peak
        from inseq_ray.methods import get_method_spec

        profile = MemoryProfile.measure(model.adapter)
        copies = 2 if method == "integrated_gradients" else 1
        pred = predict_peak(profile, get_method_spec(method).memory, copies, 1, len(ids), steps, padded=False)
        out["predicted"] = pred["total"] - pred["weights"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--methods", nargs="+", default=["saliency", "integrated_gradients", "attention"])
    parser.add_argument("--libs", nargs="+", default=["ours", "inseq"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ig-steps", type=int, default=4)
    parser.add_argument("--max-length", type=json.loads, default="{}", help='per method, e.g. {"attention": 4096}')
    parser.add_argument("--one", nargs=4, metavar=("PATH", "LIB", "METHOD", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, lib, method, length = args.one
        print(json.dumps(one(path, lib, method, int(length), args.steps, args.ig_steps)))
        return
    with tempfile.TemporaryDirectory() as path:
        build(path, max(args.lengths))
        run_all(args, path)


def run_all(args: argparse.Namespace, path: str) -> None:
    """Every (method, length, library) in its own process; one line each."""
    for method in args.methods:
        for length in args.lengths:
            if length > args.max_length.get(method, 1 << 30):
                continue
            for lib in args.libs:
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--ig-steps", str(args.ig_steps),
                       "--one", path, lib, method, str(length)]  # fmt: skip
                res = subprocess.run(cmd, check=False, capture_output=True, text=True)
                line = res.stdout.strip().splitlines()[-1] if res.returncode == 0 else None
                if line is None:
                    why = "killed (out of memory?)" if res.returncode < 0 else res.stderr.strip().splitlines()[-1:]
                    print(f"{method:22s} {length:6d} {lib:6s} failed, exit {res.returncode}: {why}")
                    continue
                r = json.loads(line)
                pred = f"  predicted {r['predicted'] / 2**20:8.0f} MiB" if "predicted" in r else ""
                print(f"{method:22s} {r['length']:6d} {lib:6s} peak +{r['peak_growth'] / 2**20:8.0f} MiB{pred}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
