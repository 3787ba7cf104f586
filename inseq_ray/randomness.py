"""Per-record randomness: every random draw of a method comes from a generator of its own record.

A record's generator is seeded from the user's seed and the record's key (its ``seq_id`` in the pipeline; its
source and target text in the API), and each kind of draw (LIME's masks of one side, SHAP's noise, SHAP's
alphas, MC dropout) has a stream of its own. Each row draws only over its own real tokens (padding is filled
with a constant), so batch size, token budget, out-of-memory halving, shard layout, actor, resume and rerun
never change a record's numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

DEFAULT_SEED = 0  # with no ``generator``: reproducible by default (Inseq draws from torch's global RNG)


def seed_of(generator: torch.Generator | int | None) -> int:
    """The user's seed: an int as given, a ``torch.Generator``'s initial seed, or :data:`DEFAULT_SEED`."""
    if generator is None:
        return DEFAULT_SEED
    if isinstance(generator, torch.Generator):
        return int(generator.initial_seed())
    if isinstance(generator, int) and not isinstance(generator, bool):
        return generator
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}.")


def record_seed(seed: int, key: str, stream: str) -> int:
    """A 63-bit seed for one record's ``stream`` of draws."""
    digest = hashlib.sha256(f"{seed}\x00{stream}\x00{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowRandom:
    """Draws for a batch whose row ``b`` is the record ``keys[b]``; every row from its own generator.

    All draws are made on the CPU (identical on every device) and moved to ``device`` by the caller.
    """

    def __init__(self, seed: int, keys: Sequence[str]) -> None:
        self.seed, self.keys = seed, list(keys)

    def generator(self, b: int, stream: str) -> torch.Generator:
        return torch.Generator().manual_seed(record_seed(self.seed, self.keys[b], stream))

    def rand(self, lead: tuple[int, ...], lengths: Sequence[int], width: int, stream: str, fill: float = 1.0):
        """(*lead, B, width) uniform [0, 1) draws; row b draws ``(*lead, lengths[b])`` and the rest is ``fill``."""
        out = torch.full((*lead, len(self.keys), width), fill)
        for b, n in enumerate(lengths):
            out[..., b, :n] = torch.rand((*lead, n), generator=self.generator(b, stream))
        return out

    def randn(self, lead: tuple[int, ...], lengths: Sequence[int], shape: Sequence[int], stream: str):
        """(*lead, B, width, hidden) standard normal draws over each row's first ``lengths[b]`` positions; 0 after."""
        width, hidden = shape
        out = torch.zeros((*lead, len(self.keys), width, hidden))
        for b, n in enumerate(lengths):
            out[..., b, :n, :] = torch.randn((*lead, n, hidden), generator=self.generator(b, stream))
        return out

    def rand_rows(self, lead: tuple[int, ...], stream: str) -> torch.Tensor:
        """(*lead, B) uniform draws, one set per row."""
        return torch.stack([torch.rand(lead, generator=self.generator(b, stream)) for b in range(len(self.keys))], -1)


def content_keys(sources: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The API's record keys: a record is its source and target text (the same pair always draws the same)."""
    return [f"{s}\x00{t}" for s, t in zip(sources, targets, strict=True)]
