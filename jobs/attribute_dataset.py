"""Entrypoint for ``ray job submit``: attribute a corpus with the shipped pipeline.

    ray job submit --working-dir . -- python jobs/attribute_dataset.py --config jobs/configs/example.yaml

Every ``inseq-ray attribute-dataset`` flag works here too (flags override the config). The output
must be a URL (``s3://...``) or an absolute path on storage the cluster shares: a relative path would
land inside the job's temporary working directory and be lost with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from inseq_ray.cli import main as cli_main
from inseq_ray.pipeline.cli import config_from_args, dataset_parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_args(dataset_parser().parse_args(argv))
    if "://" not in cfg.output and not Path(cfg.output).is_absolute():
        print(
            f"error: --output {cfg.output!r} is relative: under `ray job submit` it would land in the job's "
            "temporary working directory. Pass an s3:// URL or an absolute path on storage the cluster shares.",
            file=sys.stderr,
        )
        return 2
    return cli_main(["attribute-dataset", *argv])


if __name__ == "__main__":
    sys.exit(main())
