"""``inseq-ray attribute-dataset``: flags and/or a YAML config -> :func:`inseq_ray.pipeline.runner.run`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from inseq_ray.pipeline.config import PipelineConfig

NOT_FLAGS = ("use_ray",)  # set by --local

# One flag per concept in both subcommands (``attribute`` and ``attribute-dataset``), plus Inseq's CLI names.
CONCEPT_FLAGS: dict[str, tuple[str, ...]] = {
    "model": ("-m", "--model", "--model_name_or_path"),
    "method": ("-a", "--method", "--attribution_method"),
    "attributed_fn": ("-fn", "--attributed-fn", "--attributed_fn"),
    "step_scores": ("--step-scores", "--step_scores"),
    "attribute_target": ("--attribute-target", "--attribute_target"),
    "method_args": ("--method-args", "--attribution-args", "--attribution_kwargs"),
    "generation_args": ("--generation-args", "--generation_kwargs"),
    "batch_size": ("-bs", "--batch-size", "--batch_size"),
    "include_eos_baseline": ("--include-eos-baseline", "--include_eos_baseline", "--eos"),
}


DATASET_FLAGS: dict[str, tuple[str, ...]] = {"output": ("-o", "--output")}  # -o: where results go, everywhere


def flag_names(name: str) -> tuple[str, ...]:
    """The option strings of a config field / concept: its shared names, else ``--field-name``."""
    return CONCEPT_FLAGS.get(name) or DATASET_FLAGS.get(name) or ("--" + name.replace("_", "-"),)


def add_flag(p: argparse.ArgumentParser, name: str, **kw) -> None:
    """One flag per concept: its short name and first long name shown in ``--help``; the other spellings
    (Inseq's ``--snake_case`` names, older aliases) accepted but hidden."""
    names = flag_names(name)
    if kw.get("required"):  # argparse checks a required flag per action: its spellings stay on one action
        p.add_argument(*names, dest=name, **kw)
        return
    longs = [n for n in names if n.startswith("--")]
    visible = [n for n in names if not n.startswith("--")] + longs[:1]
    p.add_argument(*visible, dest=name, **kw)
    if longs[1:]:
        p.add_argument(*longs[1:], dest=name, **{**kw, "help": argparse.SUPPRESS})


def config_flags() -> list[tuple[tuple[str, ...], str, dict]]:
    """(option strings, config field, argparse kwargs) for every PipelineConfig field, from its type and help
    (default None: a flag not given leaves the YAML's or the config's value)."""
    return [(flag_names(f.name), f.name, field_kwargs(f, None)) for f in dataclasses.fields(PipelineConfig)
            if f.name not in NOT_FLAGS]  # fmt: skip


def add_field_flag(p: argparse.ArgumentParser, name: str, required: bool = False) -> None:
    """The flag of config field ``name`` with the field's own default, type and help (the ``attribute``
    subcommand's shared flags: one declaration, in :class:`PipelineConfig`, for both subcommands)."""
    f = next(f for f in dataclasses.fields(PipelineConfig) if f.name == name)
    kw = field_kwargs(f, None if required else _default(f))
    if required:
        kw["help"] = f.metadata["help"]
    add_flag(p, name, required=required, **kw) if required else add_flag(p, name, **kw)


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]


def field_kwargs(f: dataclasses.Field, default) -> dict:
    """argparse kwargs of config field ``f``: its type, choices and help (which states the field's default)."""
    field_default = _default(f)
    shown = f.metadata.get("show_default") or (
        json.dumps(field_default) if isinstance(field_default, list | dict) else field_default
    )
    text = f.metadata["help"]
    kw: dict = {"default": default, "help": text if "default:" in text else f"{text} (default: {shown})"}
    kind = str(f.type).replace(" | None", "")
    if kind == "bool":
        kw["action"] = argparse.BooleanOptionalAction
    elif kind.startswith("list"):
        kw["nargs"] = "*"
    elif kind.startswith("dict"):
        kw["type"] = json_object
    elif kind in ("int", "float"):
        kw["type"] = {"int": int, "float": float}[kind]
    if f.metadata.get("choices"):
        kw["choices"] = f.metadata["choices"]
    return kw


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
    for _, name, kw in config_flags():
        add_flag(p, name, **kw)
    p.add_argument("--local", action="store_true", help="run the blocks in this process, without Ray")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="estimate records, tokens, GPU-hours and output size from a sample; run nothing",
    )
    p.add_argument("--no-report", action="store_true", help="do not print the polars summary at the end")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: remove the run under --output first (only the files a run owns; says what it removed)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    cfg = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    for _, name, _ in config_flags():
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.local:
        cfg.use_ray = False
    return cfg


def dataset_parser() -> argparse.ArgumentParser:
    """A standalone parser with the ``attribute-dataset`` flags (for entrypoints such as jobs/)."""
    p = argparse.ArgumentParser(prog="attribute-dataset")
    add_dataset_args(p)
    return p


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
    from inseq_ray.errors import RunFailed
    from inseq_ray.pipeline.report import print_summary
    from inseq_ray.pipeline.runner import run
    from inseq_ray.pipeline.verdict import final_verdict
    from inseq_ray.report.summary import print_report

    cfg = config_from_args(args)
    if args.dry_run:
        from inseq_ray.pipeline.estimate import estimate, print_estimate

        print_estimate(estimate(cfg))
        return 0
    manifest = run(cfg, progress=not args.quiet, overwrite=args.overwrite)
    print_summary(manifest)
    failed = final_verdict(manifest, cfg.max_error_rate)
    if failed:  # the results are written; the exit status says the run is not a success
        raise RunFailed(failed)
    if not args.no_report:
        print_report(cfg.output)
    return 0
