"""The typed data that travels between the pipeline's blocks (one shard at a time).

``ShardBatch`` starts with its ``shard``; each block declares the fields it ``needs`` and the ones it
``provides`` (checked once by :func:`check_blocks` when a worker is built), so a newcomer can read
what a block depends on from its class, and a block list missing a step fails before any work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from inseq_ray.context.output import AttributeContextOutput
from inseq_ray.output import FeatureAttributionSequenceOutput
from inseq_ray.pipeline.shards import Record, Shard

Output = FeatureAttributionSequenceOutput | AttributeContextOutput  # a record's result (context mode: the latter)


@dataclass
class ShardSummary:
    """What a committed shard reports (also its ``_shards/<id>.json`` marker)."""

    shard_id: str
    records: int
    ok: int
    errors: int
    target_tokens: int
    rows: dict[str, int]
    bytes: dict[str, int]
    attribute_seconds: float
    input_bytes: int
    fingerprint: str = ""  # the configuration it was made under (a manifest is never written over mixed ones)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)  # reason -> one message (the first)
    started_at: float = 0.0  # wall-clock (epoch seconds) when the worker took the shard
    finished_at: float = 0.0  # ... and when its marker was written
    write_seconds: float = 0.0  # waiting for object writes plus writing the table files
    worker: str = ""  # "host:pid" of the process (actor) that ran it
    node: str = ""  # the Ray node id ("" locally)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Attributed:
    """One attributed batch of a shard on its way to be written: its (record, output) pairs, its records that
    failed, and the seconds spent attributing it."""

    results: list[tuple[Record, Output]] = field(default_factory=list)
    errors: list[Record] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ShardBatch:
    """One shard on its way through the blocks; fields are filled in block order."""

    shard: Shard
    records: list[Record] = field(default_factory=list)  # every record read, bad ones included
    results: list[tuple[Record, Output]] = field(default_factory=list)  # attributed
    errors: list[Record] = field(default_factory=list)  # records with error_reason set
    attribute_seconds: float = 0.0
    write_seconds: float = 0.0
    started_at: float = 0.0  # wall-clock time the worker took the shard
    summary: ShardSummary | None = None
    # the shard's attributed batches, produced as they are consumed: Attribute defines the stream, WriteObjects
    # pulls it (writing each batch while the next is attributed)
    attributed: Iterator[Attributed] = field(default_factory=lambda: iter(()), repr=False, compare=False)
    # progress: the runner that made the batch counts records as they are attributed (locally the bar itself)
    on_records: Callable[[int], None] = field(default=lambda n: None, repr=False, compare=False)


class Block(Protocol):
    """``Block(config)`` sets up once; ``block(batch)`` transforms one shard's batch and hands it on."""

    needs: ClassVar[tuple[str, ...]]
    provides: ClassVar[tuple[str, ...]]

    def __call__(self, batch: ShardBatch) -> ShardBatch: ...


def check_blocks(blocks: list, start: tuple[str, ...] = ("shard",)) -> None:
    """Every block's ``needs`` are provided by the start or an earlier block, and a summary comes out."""
    valid = {f.name for f in dataclasses.fields(ShardBatch)} - {"on_records"}
    have = set(start)
    for block in blocks:
        name = type(block).__name__
        for key in (*block.needs, *block.provides):
            if key not in valid:
                raise TypeError(
                    f"block {name} names {key!r}, which is not a ShardBatch field ({', '.join(sorted(valid))})."
                )
        missing = sorted(set(block.needs) - have)
        if missing:
            raise TypeError(f"block {name} needs {', '.join(missing)}, which no earlier block provides.")
        have |= set(block.provides)
    if "summary" not in have:
        raise TypeError("no block provides the shard's summary: the block list must end with a commit.")
