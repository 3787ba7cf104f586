"""Entrypoint for ``ray job submit``: attribute a corpus with the shipped pipeline.

    ray job submit --working-dir . -- python jobs/attribute_dataset.py --config jobs/configs/example.yaml

Every ``inseq-ray attribute-dataset`` flag works here too (flags override the config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from inseq_ray.pipeline.cli import add_dataset_args, run_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    return run_dataset(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
