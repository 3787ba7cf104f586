"""Tiny local models (no hub access): random builders, the trained toy models, their tasks and evaluation.

- :mod:`inseq_ray.toy.builders`: ``build_tiny_model(kind, path)`` and ``resolve_toy("toy:<name>")``.
- :mod:`inseq_ray.toy.tasks`: synthetic tasks whose gold alignment is known.
- :mod:`inseq_ray.toy.train`: ``python -m inseq_ray.toy.train OUT`` rebuilds the shipped trained models.
- :mod:`inseq_ray.toy.evaluate`: ``python -m inseq_ray.toy.evaluate`` prints accuracy and plausibility.
"""

from inseq_ray.toy.builders import (
    TOY_BUILDERS,
    TRAINED,
    build_tiny_model,
    cache_root,
    resolve_toy,
    synthetic_sentences,
    train_tokenizer,
)

__all__ = [
    "TOY_BUILDERS",
    "TRAINED",
    "build_tiny_model",
    "cache_root",
    "resolve_toy",
    "synthetic_sentences",
    "train_tokenizer",
]
