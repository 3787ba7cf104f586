"""A model spread over devices attributes as the same model on one device (the GPU check's multi-device case).

    python benchmarks/placement_check.py --model gpt2-small

With two or more GPUs the model is split over all of them (``device_map="auto"``, ``max_memory`` of about half
the model per GPU so both are used); with one GPU, half of the layers are offloaded to CPU memory; on a CPU-only
machine, to disk. Prints the map, the max |difference| per method next to the model on one device, and the time
of each (saliency, integrated gradients, attention, value zeroing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from engine_bench import build, corpus

import inseq_ray

METHODS = {"saliency": {}, "integrated_gradients": {"n_steps": 16}, "attention": {}, "value_zeroing": {}}


def placement(size: int, offload: str) -> dict:
    """load_model's placement arguments: every GPU, or one GPU plus CPU memory, or CPU plus disk."""
    gpus = torch.cuda.device_count()
    if gpus >= 2:
        return {"device_map": "auto", "max_memory": dict.fromkeys(range(gpus), size // 2 + (64 << 20))}
    if gpus == 1:
        return {"device_map": "auto", "max_memory": {0: size // 2, "cpu": 4 * size}}
    return {"device_map": "auto", "max_memory": {"cpu": size // 2}, "offload_folder": offload}


def timed(am, method: str, src: list[str], tgt: list[str]):
    start = time.perf_counter()
    out = am.attribute(src, tgt, method=method, attribution_args=METHODS[method], show_progress=False, batch_size=8)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-small", choices=["tiny-gpt2", "gpt2-small"])
    parser.add_argument("--sentences", type=int, default=8)
    args = parser.parse_args()
    model, tok = build(args.model)
    src, tgt = corpus(args.sentences, enc_dec=False)
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        tok.save_pretrained(path)
        one = inseq_ray.load_model(path)
        size = sum(p.numel() * p.element_size() for p in one.model.parameters())
        spread = inseq_ray.load_model(path, **placement(size, str(Path(path) / "offload")))
        print("device map:", sorted(set(map(str, spread.model.hf_device_map.values()))), "input device:", spread.device)
        for method in METHODS:
            a, ta = timed(one, method, src, tgt)
            b, tb = timed(spread, method, src, tgt)
            diff = max(
                (x.target_attributions - y.target_attributions.to(x.target_attributions.device))
                .nan_to_num()
                .abs()
                .max()
                .item()
                for x, y in zip(a.sequence_attributions, b.sequence_attributions, strict=True)
            )
            print(f"{method:22s} max |diff| {diff:.2e}   one device {ta:.2f} s   spread {tb:.2f} s")


if __name__ == "__main__":
    main()
