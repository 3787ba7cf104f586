"""Pipeline throughput, driver memory and output size on a synthetic corpus.

    python benchmarks/pipeline_bench.py --records 10000 --num-cpus 4

Writes an N-line text corpus of toy-translator sentences, runs the Ray pipeline on it (Ray started
in-process with --num-cpus logical CPUs), and prints records/s, target tokens/s, the driver's RSS
(peak from getrusage; the model lives in the actors, not the driver) and bytes per record of
every output.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.toy.tasks import translation_pair


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--num-cpus", type=int, default=4)
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--method", default="saliency")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-bytes", type=int, default=256 << 10)
    p.add_argument("--output", default=None, help="run prefix (default: a temp folder)")
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="inseq-bench-"))
    corpus = work / "corpus.txt"
    rng = random.Random(42)
    with open(corpus, "w") as f:  # streamed: the corpus is never held in the driver
        for _ in range(args.records):
            f.write(translation_pair(rng)[0] + "\n")
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    base = rss_mib()
    cfg = PipelineConfig(
        input=str(corpus),
        output=args.output or str(work / "run"),
        method=args.method,
        batch_size=args.batch_size,
        shard_bytes=args.shard_bytes,
        num_actors=args.num_actors,
    )
    t0 = time.perf_counter()
    m = run(cfg, progress=False)
    wall = time.perf_counter() - t0
    print(
        f"records: {m['records']} ({m['ok']} ok, {m['errors']} errors) in {m['shards']} shards, {args.num_actors} actors, "
        f"{args.num_cpus} logical CPUs, method={args.method}"
    )
    print(f"wall: {wall:.1f}s -> {m['records'] / wall:.1f} records/s, {m['target_tokens'] / wall:.1f} target tokens/s")
    print(f"driver RSS: {base:.0f} MiB after ray.init, {rss_mib():.0f} MiB at the end, peak {peak_rss_mib():.0f} MiB")
    for name, size in sorted(m["bytes"].items()):
        print(f"bytes/record {name:<22}{size / m['records']:>10.1f}")
    print(f"bytes/record {'total':<22}{sum(m['bytes'].values()) / m['records']:>10.1f}")


if __name__ == "__main__":
    main()
