"""``inseq-ray attribute-dataset`` (filled in by the pipeline)."""

from __future__ import annotations


def add_dataset_parser(sub) -> None:  # placeholder until the pipeline lands
    return None
