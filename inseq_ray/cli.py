"""Command line: ``inseq-ray attribute`` (one-off) and ``inseq-ray attribute-dataset`` (a corpus on Ray)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from inseq_ray.context.cli import add_context_parser
from inseq_ray.pipeline.cli import add_dataset_parser, add_field_flag, add_flag
from inseq_ray.redact import redact_text

ATTRIBUTE_EPILOG = """examples:
  inseq-ray attribute -m toy:translator -a saliency -i "the small cat sees a dog"
  inseq-ray attribute -m Helsinki-NLP/opus-mt-en-it -a integrated_gradients -i "Hello world" \\
      --method-args '{"n_steps": 20}' --step-scores probability entropy --save out.json.gz --html out.html
  inseq-ray attribute -m gpt2 -a attention -i "The capital of France" -g "The capital of France is Paris" \\
      --method-args '{"layers": [0, 2], "aggregate_heads_fn": "max"}' --png out.png

Models: a Hugging Face id or local folder; toy:gpt2, toy:bart (random, built locally) and
toy:translator, toy:copier (trained on synthetic tasks, see inseq_ray.toy) need no network.
"""


SHARED_FIELDS = ("method", "device", "dtype", "attributed_fn", "step_scores", "attribute_target", "method_args",
                 "generation_args", "batch_size")  # fmt: skip


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags ``attribute`` shares with ``attribute-dataset``: generated from the same PipelineConfig fields
    (names, Inseq aliases, types, choices, defaults and help written once, there)."""
    add_field_flag(p, "model", required=True)
    for name in SHARED_FIELDS:
        add_field_flag(p, name)
    add_flag(p, "include_eos_baseline", action="store_true", help="UNK baselines at EOS too")


def add_text_args(p: argparse.ArgumentParser) -> None:
    """``attribute``'s own flags: the texts, the attributed span and where the result goes."""
    p.add_argument(
        "-i",
        "--input-texts",
        "--input_texts",
        dest="input_texts",
        nargs="+",
        required=True,
        help="input text(s) (the prompt for decoder-only models)",
    )
    p.add_argument(
        "-g",
        "--generated-texts",
        "--generated_texts",
        dest="generated_texts",
        nargs="+",
        default=None,
        help="forced target text(s); generated if omitted",
    )
    p.add_argument(
        "-s",
        "--attr-pos-start",
        "--start_pos",
        dest="attr_pos_start",
        type=int,
        default=None,
        help="first target position to attribute",
    )
    p.add_argument(
        "-e",
        "--attr-pos-end",
        "--end_pos",
        dest="attr_pos_end",
        type=int,
        default=None,
        help="one past the last target position to attribute",
    )
    p.add_argument(
        "-o", "--save", "--save_path", dest="save", default=None, help="save the raw output (JSON; .gz compresses)"
    )
    p.add_argument("--html", "--viz_path", dest="html", default=None, help="write the HTML heatmap here")
    p.add_argument(
        "--png", default=None, help="write PNG heatmaps here (one per sequence: x_0.png, x_1.png, ... when several)"
    )
    p.add_argument("--hide", action="store_true", help="do not print the heatmap")


def build_parser() -> argparse.ArgumentParser:
    from inseq_ray import __version__

    parser = argparse.ArgumentParser(
        prog="inseq-ray", description="Feature attribution for sequence generation models."
    )
    parser.add_argument("--version", action="version", version=f"inseq-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "attribute",
        help="attribute one or a few texts and show/save the result",
        epilog=ATTRIBUTE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_text_args(p)
    p.set_defaults(func=run_attribute)
    add_dataset_parser(sub)
    add_report_parser(sub)
    add_status_parser(sub)
    add_context_parser(sub)
    return parser


def add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a static HTML report of a finished run (local or s3://...)",
        description="A self-contained HTML report of a run: summary, errors, distributions, top token pairs, the "
        "least sure records, and heatmap pages of a sample of sequences. Open <output>/index.html in a browser.",
    )
    p.add_argument("run", help="the run's output prefix (a folder or a URL such as s3://bucket/run)")
    p.add_argument("-o", "--output", default=None, help="local folder for the report (default: ./<run name>-report)")
    p.add_argument("--sample", type=int, default=20, help="sequences that get a heatmap page (default 20)")
    p.add_argument("--ids", nargs="*", default=[], help="seq_ids that get a heatmap page too")
    p.set_defaults(func=run_report)


def add_status_parser(sub) -> None:
    p = sub.add_parser(
        "status",
        help="how far a run is, how fast it goes, what failed (while it runs or after; local or s3://...)",
        description="Reads only the run prefix (_run.json, shard markers, failure markers, driver leases, manifest): "
        "shards committed / planned, records ok / errors by reason, throughput and ETA, failed shards with their "
        "last error, live drivers, work per node.",
    )
    p.add_argument("run", help="the run's output prefix (a folder or a URL such as s3://bucket/run)")
    p.add_argument("--json", action="store_true", help="print the status as JSON (for scripts)")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="print it again every SECONDS")
    p.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    import json
    import time

    from inseq_ray.pipeline.status import read_status, render

    while True:
        status = read_status(args.run)
        print(json.dumps(status, indent=2) if args.json else render(status), flush=True)
        if args.watch is None or status["state"] == "complete":
            return 0
        time.sleep(max(1.0, args.watch))
        print()


def run_report(args: argparse.Namespace) -> int:
    from inseq_ray.report import build_report

    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0, got {args.sample}.")
    name = args.run.rstrip("/").rsplit("/", 1)[-1] or "run"
    index = build_report(args.run, args.output or f"{name}-report", args.sample, args.ids)
    print(f"report: {index} (open it in a browser; it needs no server and makes no network requests)")
    return 0


def run_attribute(args: argparse.Namespace) -> int:
    import inseq_ray
    from inseq_ray.settings import check_method_args

    check_method_args(args.method, args.attributed_fn, args.step_scores, args.method_args)  # before loading
    model = inseq_ray.load_model(args.model, args.method, device=args.device, dtype=args.dtype)
    out = model.attribute(
        args.input_texts,
        args.generated_texts,
        attributed_fn=args.attributed_fn,
        step_scores=args.step_scores,
        attribute_target=args.attribute_target,
        attr_pos_start=args.attr_pos_start,
        attr_pos_end=args.attr_pos_end,
        batch_size=args.batch_size,
        generation_args=args.generation_args,
        include_eos_baseline=args.include_eos_baseline,
        show_progress=False,
        **args.method_args,
    )
    if args.save:
        for path in out.save(args.save, compress=args.save.endswith(".gz"), overwrite=True):
            print(f"saved {path}")
    for path in (args.html, args.png):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(out.show(return_html=True))
        print(f"wrote {args.html}")
    if args.png:
        for path in out.plot(args.png):
            print(f"wrote {path}")
    if not args.hide:
        out.show()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it when (lazily) imported
    if "transformers" in sys.modules:  # already imported (main() called in-process): switch it off there
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:  # user and environment errors: one clear line, no traceback
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
    except RuntimeError as e:  # failures inside the actors, already reduced to one line
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
