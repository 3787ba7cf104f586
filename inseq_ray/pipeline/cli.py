"""``inseq-ray attribute-dataset``: flags and/or a YAML config -> :func:`inseq_ray.pipeline.runner.run`."""

from __future__ import annotations

import argparse
import json

from inseq_ray.pipeline.config import PipelineConfig

FLAG_FIELDS = {  # flag -> (config field, argparse kwargs)
    "--input": (
        "input",
        {
            "help": "file, folder or glob (any fsspec URL): txt, jsonl, csv, parquet (default: the bundled example corpus)"
        },
    ),
    "--output": (
        "output",
        {"help": "run prefix (any fsspec URL); rerun with the same prefix to resume (default: out/run)"},
    ),
    "--model": ("model", {"help": "HF id, local folder or toy:<name> (default: toy:translator)"}),
    "--method": ("method", {"help": "attribution method (default: saliency)"}),
    "--input-format": ("input_format", {"help": "text|jsonl|csv|parquet (default: from the extension)"}),
    "--source-column": ("source_column", {"help": "column with the input text (default: source)"}),
    "--target-column": ("target_column", {"help": "column with forced targets (default: target)"}),
    "--attributed-fn": ("attributed_fn", {"help": "attributed step function (default: probability)"}),
    "--aggregate-fn": ("aggregate_fn", {"help": "hidden-dim aggregation for tables/objects (default: vnorm)"}),
    "--scores-precision": ("scores_precision", {"help": "float32|float16|bfloat16|float8 in the objects"}),
    "--batch-size": ("batch_size", {"type": int, "help": "sentences per forward pass (default: 32)"}),
    "--shard-bytes": ("shard_bytes", {"type": int, "help": "input bytes per shard (unit of resume)"}),
    "--num-actors": ("num_actors", {"type": int, "help": "attribution actors (default: one per GPU, else 2)"}),
    "--num-gpus-per-actor": ("num_gpus_per_actor", {"type": float, "help": "default: 1 if the cluster has GPUs"}),
    "--num-cpus-per-actor": ("num_cpus_per_actor", {"type": float, "help": "default: 1"}),
    "--device": ("device", {"help": "cpu, cuda (default: cuda when the actor has a GPU)"}),
    "--dtype": ("dtype", {"choices": ["fp32", "bf16", "fp16"], "help": "model precision"}),
}


def json_object(value: str) -> dict:
    """argparse type: a JSON object such as '{"n_steps": 20}'."""
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {value!r}") from None
    if not isinstance(out, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"n_steps\": 20}}', got {value!r}")
    return out


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (keys: the PipelineConfig fields); flags override it")
    for flag, (_, kw) in FLAG_FIELDS.items():
        p.add_argument(flag, default=None, **kw)
    p.add_argument("--step-scores", nargs="*", default=None, help="step scores to store (default: probability)")
    p.add_argument(
        "--method-args", type=json_object, default=None, help="JSON method arguments, e.g. '{\"n_steps\": 20}'"
    )
    p.add_argument(
        "--generation-args", type=json_object, default=None, help="JSON generate() arguments when targets are absent"
    )
    p.add_argument("--attribute-target", action="store_true", default=None, help="also attribute the target prefix")
    p.add_argument("--save-granular", action="store_true", default=None, help="keep hidden-size tensors in the objects")
    p.add_argument("--local", action="store_true", help="run the blocks in this process, without Ray")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="estimate records, tokens, GPU-hours and output size from a sample; run nothing",
    )
    p.add_argument("--no-report", action="store_true", help="do not print the polars summary at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    cfg = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    updates = {field: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (field, _) in FLAG_FIELDS.items()}
    for name in ("step_scores", "method_args", "generation_args", "attribute_target", "save_granular"):
        updates[name] = getattr(args, name)
    for key, value in updates.items():
        if value is not None:
            setattr(cfg, key, value)
    if args.local:
        cfg.use_ray = False
    return cfg


def add_dataset_parser(sub) -> None:
    p = sub.add_parser(
        "attribute-dataset",
        help="attribute a corpus on Ray; write objects + Parquet tables under --output",
        description="Attribute every record of a corpus (Ray Data actor pool, or --local) and write per-sequence "
        ".json.gz objects and Parquet tables under --output. Uses the cluster in RAY_ADDRESS if set.",
    )
    add_dataset_args(p)
    p.set_defaults(func=run_dataset)


def run_dataset(args: argparse.Namespace) -> int:
    from inseq_ray.pipeline.report import print_report, print_summary
    from inseq_ray.pipeline.runner import run

    cfg = config_from_args(args)
    if args.dry_run:
        from inseq_ray.pipeline.estimate import estimate, print_estimate

        print_estimate(estimate(cfg))
        return 0
    manifest = run(cfg, progress=not args.quiet)
    print_summary(manifest)
    if not args.no_report:
        print_report(cfg.output)
    return 0
