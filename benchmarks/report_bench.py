"""Time and peak memory of ``inseq-ray report`` on a synthetic run of N sequences (tables only, no objects).

    python benchmarks/report_bench.py --sequences 100000 --steps 10 --tokens 12

Writes a run-shaped folder (manifest.json + Parquet tables, 10,000 sequences per shard) with random scores, then builds its
report with ``--sample 0`` (sequence pages load objects, which the synthetic run does not have) and prints
the seconds and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def _object(root: Path, steps: int, tokens: int) -> str:
    """One small saved sequence that every synthetic row points at (the report's pages load objects)."""
    import torch

    from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput

    src = [(f"w{i}", i) for i in range(tokens)]
    tgt = [("<s>", 0)] + [(f"w{i}", i) for i in range(steps)]
    seq = FeatureAttributionSequenceOutput(
        src, tgt, torch.rand(tokens, steps), None, {"probability": torch.rand(steps)}, 1, steps + 1, ()
    )
    return FeatureAttributionOutput([seq], {}).save(str(root / "object.json.gz"), compress=True)[0]


def synthesize(root: Path, n: int, steps: int, tokens: int, per_shard: int = 10_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    uri = _object(root, steps, tokens)
    shards = max(1, -(-n // per_shard))  # 10,000 records per shard (a real run's shards hold a few thousand)
    vocab = np.array([f"w{i}" for i in range(500)])
    for s in range(shards):
        ids = [f"{s:02x}{i:018x}" for i in range(s * n // shards, (s + 1) * n // shards)]
        m = len(ids)
        seq = pl.DataFrame(
            {
                "seq_id": ids,
                "source_text": ["a synthetic source"] * m,
                "target_text": ["a synthetic target"] * m,
                "n_steps": [steps] * m,
                "attr_pos_start": [1] * m,
                "source_tokens": [[f"w{i}" for i in range(tokens)]] * m,
                "target_tokens": [["<s>"] + [f"w{i}" for i in range(steps)]] * m,
                "object_uri": [uri] * m,
            }
        )
        cells = m * steps * tokens
        score = rng.dirichlet(np.ones(tokens), size=m * steps).astype(np.float32).reshape(-1)
        src = pl.DataFrame(
            {
                "seq_id": np.repeat(ids, steps * tokens),
                "step": np.tile(np.repeat(np.arange(steps, dtype=np.int32), tokens), m),
                "target_token": vocab[rng.integers(0, 500, cells)],
                "attributed_pos": np.tile(np.arange(tokens, dtype=np.int32), m * steps),
                "attributed_token": vocab[rng.integers(0, 500, cells)],
                "score": score,
            }
        )
        step_scores = pl.DataFrame(
            {
                "seq_id": np.repeat(ids, steps),
                "step": np.tile(np.arange(steps, dtype=np.int32), m),
                "probability": rng.random(m * steps).astype(np.float32),
            }
        )
        errors = pl.DataFrame(schema={"seq_id": pl.String, "reason": pl.String, "message": pl.String})
        for name, df in (("sequences", seq), ("source_attributions", src), ("step_scores", step_scores),
                         ("errors", errors), ("target_attributions", src.head(0))):  # fmt: skip
            (root / "tables" / name).mkdir(parents=True, exist_ok=True)
            df.write_parquet(root / "tables" / name / f"{s}.parquet")
    rows = {"sequences": n, "source_attributions": n * steps * tokens, "step_scores": n * steps, "errors": 0}
    manifest = {"records": n, "ok": n, "errors": 0, "config": {"step_scores": ["probability"]}, "table_rows": rows}
    (root / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tokens", type=int, default=12)
    p.add_argument("--make", default=None, help=argparse.SUPPRESS)  # internal: synthesize into this folder
    args = p.parse_args()
    if args.make:
        synthesize(Path(args.make), args.sequences, args.steps, args.tokens)
        return
    from inseq_ray.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        t0 = time.perf_counter()
        sizes = ["--sequences", str(args.sequences), "--steps", str(args.steps), "--tokens", str(args.tokens)]
        subprocess.run([sys.executable, __file__, "--make", str(root), *sizes], check=True)  # its memory is not ours
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_report(str(root), Path(tmp) / "report", sample=0)
        secs = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cells = args.sequences * args.steps * args.tokens
        size = sum(f.stat().st_size for f in root.rglob("*.parquet")) / 1e6
        print(f"# {args.sequences:,} sequences, {cells:,} attribution rows, {size:.0f} MB of Parquet ({made:.1f} s)")
        print(f"report: {secs:.1f} s; peak RSS of the reporting process {peak:.0f} MiB")


if __name__ == "__main__":
    main()
