"""Pipeline overhead: the ``--local`` pipeline's records/s next to the bare engine's on the same records.

    python benchmarks/overhead_bench.py --records 1500

Same model (toy translator), method (saliency), batch settings (batch 32, the CPU token budget) and
inputs (targets generated in both). Both are timed from nothing loaded to results: the engine from
``load_model`` to outputs in memory, the pipeline from start to manifest (preflight, read, model load,
attribute, objects, tables, commit; local output). Each runs ``--repeats`` times (default 5), alternating, and the
best of each is compared (this machine's timings vary by tens of percent). The target: the pipeline at
>= 85% of the engine's records/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inseq_ray
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.settings import CPU_BATCH_TOKENS
from inseq_ray.toy.tasks import translation_pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = random.Random(3)
    sentences = [translation_pair(rng)[0] for _ in range(args.records)]
    work = Path(tempfile.mkdtemp(prefix="inseq-overhead-"))
    (work / "c.txt").write_text("".join(s + "\n" for s in sentences))

    def engine_once() -> float:
        start = time.perf_counter()
        model = inseq_ray.load_model("toy:translator", "saliency", device="cpu")
        model.attribute(
            sentences,
            batch_size=args.batch_size,
            max_batch_tokens=CPU_BATCH_TOKENS,
            step_scores=["probability"],
            generation_args={"max_new_tokens": 40},
            aggregate_hidden_fn="vnorm",
            show_progress=False,
        )
        return time.perf_counter() - start

    def pipeline_once(i: int) -> float:
        cfg = PipelineConfig(
            input=str(work / "c.txt"), output=str(work / f"run{i}"), batch_size=args.batch_size, use_ray=False
        )
        start = time.perf_counter()
        run(cfg, progress=False)
        return time.perf_counter() - start

    engine_once()  # warm-up: first use of the toy model and of torch's kernels
    times = {"engine": [], "pipeline": []}
    for i in range(args.repeats):
        times["engine"].append(engine_once())
        times["pipeline"].append(pipeline_once(i))
    engine = args.records / min(times["engine"])
    pipeline = args.records / min(times["pipeline"])
    print(f"{args.records} records, toy translator, saliency, batch {args.batch_size}, CPU, local output")
    print(f"engine:   {engine:7.1f} records/s  (runs: {', '.join(f'{t:.2f}s' for t in times['engine'])})")
    print(
        f"pipeline: {pipeline:7.1f} records/s  (runs: {', '.join(f'{t:.2f}s' for t in times['pipeline'])}; "
        f"{pipeline / engine:.0%} of the engine; target >= 85%)"
    )


if __name__ == "__main__":
    main()
