"""Plan a corpus into deterministic shards and read one shard into records (no Ray here).

A shard is a byte range of a text/JSONL file (lines belong to the range they start in), a whole
CSV file, or one Parquet row group. Shard ids and record positions depend only on the sorted file
list and the shard size, so a rerun plans the same shards and ``seq_id``s.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import fsspec

from inseq_ray.errors import Reason

FORMATS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Shard:
    """One unit of work. ``start``/``end``: byte range (text, jsonl) or row-group index (parquet)."""

    shard_id: str
    url: str
    rel: str
    fmt: str
    start: int
    end: int
    offset: int = 0  # parquet: rows before this row group (record position = offset + row)
    size: int = 0  # bytes this shard covers (for progress)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Record:
    """One input record; bad ones carry ``error_reason`` (a :class:`Reason`) instead of raising.

    The last four fields are filled in by the blocks that attribute and write it.
    """

    seq_id: str
    shard: str
    source_file: str
    position: int
    source: str
    target: str | None
    error_reason: str = ""
    error_message: str = ""
    generated_text: str | None = None  # the attributed target (forced or generated)
    generated: bool = False  # the target was generated
    object_uri: str | None = None
    object_bytes: int = 0


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in set(FORMATS.values()):
            raise ValueError(f"Unknown input format {fmt!r}; valid: {', '.join(sorted(set(FORMATS.values())))}.")
        return fmt
    for ext, name in FORMATS.items():
        if path.endswith(ext) or path.endswith(ext + ".gz"):
            return name
    raise ValueError(
        f"Cannot tell the format of {path!r} from its extension; pass input_format (text, jsonl, csv, parquet)."
    )


def list_inputs(url: str) -> tuple[fsspec.AbstractFileSystem, list[str], str]:
    """Expand a file, folder or glob into sorted file paths; returns (fs, paths, base for rel paths)."""
    fs, root = fsspec.core.url_to_fs(url)
    if any(c in root for c in "*?["):
        paths = sorted(p for p in fs.glob(root) if fs.isfile(p))
        base = root.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(root):
        paths = sorted(
            p
            for p in fs.find(root)
            if any(p.endswith(e) for e in FORMATS) and not p.rsplit("/", 1)[-1].startswith((".", "_"))
        )
        base = root.rstrip("/")
    else:
        paths, base = [root], root.rsplit("/", 1)[0]
    if not paths:
        raise FileNotFoundError(f"No input files found at {url!r}.")
    return fs, paths, base


def plan_shards(url: str, fmt: str | None = None, shard_bytes: int = 4 << 20) -> list[Shard]:
    """Deterministic shards of every input file."""
    fs, paths, base = list_inputs(url)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    shards: list[Shard] = []
    for i, path in enumerate(paths):
        full = path if protocol in ("file", "local") else f"{protocol}://{path}"
        rel = path[len(base) :].lstrip("/") or path.rsplit("/", 1)[-1]
        kind = detect_format(path, fmt)
        size = fs.size(path)
        if kind in ("text", "jsonl") and not path.endswith(".gz"):
            n = max(1, -(-size // shard_bytes))
            for j in range(n):
                start, end = j * shard_bytes, min(size, (j + 1) * shard_bytes)
                shards.append(Shard(f"{i:05d}-{j:05d}", full, rel, kind, start, end, size=end - start))
        elif kind == "parquet":
            import pyarrow.parquet as pq

            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            offset = 0
            for j in range(meta.num_row_groups):
                rows = meta.row_group(j).num_rows
                shards.append(
                    Shard(f"{i:05d}-{j:05d}", full, rel, kind, j, j + 1, offset, size // max(1, meta.num_row_groups))
                )
                offset += rows
        else:
            shards.append(Shard(f"{i:05d}-00000", full, rel, kind, 0, -1, size=size))
    return shards


def seq_id_for(rel: str, position: int, source: str, target: str | None) -> str:
    """Stable id from the record's file, position and content (not from run order)."""
    h = hashlib.sha1(f"{rel}\x00{position}\x00{source}\x00{target or ''}".encode("utf-8", "backslashreplace"))
    return h.hexdigest()[:20]


def _record(
    shard: Shard, position: int, source: str, target: str | None, reason: Reason | str = "", message: str = ""
) -> Record:
    return Record(
        seq_id=seq_id_for(shard.rel, position, source, target),
        shard=shard.shard_id,
        source_file=shard.rel,
        position=position,
        source=source,
        target=target,
        error_reason=str(reason),
        error_message=message,
    )


def read_shard(shard: Shard, source_column: str = "source", target_column: str | None = "target") -> Iterator[Record]:
    """Records of one shard; unreadable records come back with ``error_reason`` set, never raised."""
    if shard.fmt in ("text", "jsonl"):
        yield from _read_lines(shard, source_column, target_column)
    else:  # csv, parquet
        yield from _read_table(shard, source_column, target_column)


def _lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) for lines starting in [start, end); whole file for gzipped input."""
    compression = "gzip" if shard.url.endswith(".gz") else None
    with fsspec.open(shard.url, "rb", compression=compression) as f:
        if compression:
            pos = 0
            for raw in f:
                yield pos, raw
                pos += len(raw)
            return
        pos = shard.start
        if shard.start > 0:
            f.seek(shard.start - 1)
            pos = shard.start - 1 + len(f.readline())
        else:
            f.seek(0)
        while pos < shard.end:
            raw = f.readline()
            if not raw:
                break
            yield pos, raw
            pos += len(raw)


def _read_lines(shard: Shard, source_column: str, target_column: str | None) -> Iterator[Record]:
    for pos, raw in _lines(shard):
        raw = raw.rstrip(b"\r\n")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _record(
                shard,
                pos,
                raw.decode("utf-8", "backslashreplace"),
                None,
                Reason.INVALID_UTF8,
                f"not UTF-8: {e.reason} at byte {e.start}",
            )
            continue
        if shard.fmt == "text":
            reason = "" if line.strip() else Reason.EMPTY
            yield _record(shard, pos, line, None, reason, "empty line" if reason else "")
            continue
        if not line.strip():
            yield _record(shard, pos, line, None, Reason.EMPTY, "empty line")
            continue
        yield _json_record(shard, pos, line, source_column, target_column)


def _json_record(shard: Shard, pos: int, line: str, source_column: str, target_column: str | None) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return _record(shard, pos, line, None, Reason.BAD_JSON, f"invalid JSON: {e.msg}")
    if not isinstance(obj, dict) or not isinstance(obj.get(source_column), str):
        return _record(shard, pos, line, None, Reason.MISSING_COLUMN, f"no string column {source_column!r}")
    target = obj.get(target_column) if target_column else None
    return _check_text(shard, pos, obj[source_column], target if isinstance(target, str) else None)


def _check_text(shard: Shard, pos: int, source: str, target: str | None) -> Record:
    if not source.strip():
        return _record(shard, pos, source, target, Reason.EMPTY, "empty source text")
    if target is not None and not target.strip():
        return _record(shard, pos, source, target, Reason.EMPTY, "empty target text")
    return _record(shard, pos, source, target)


def _read_table(shard: Shard, source_column: str, target_column: str | None) -> Iterator[Record]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    with fsspec.open(shard.url, "rb") as f:
        if shard.fmt == "csv":
            table = pcsv.read_csv(io.BytesIO(f.read()))
        else:
            table = pq.ParquetFile(f).read_row_group(shard.start)
    if source_column not in table.column_names:
        raise ValueError(f"{shard.rel} has no column {source_column!r} (columns: {', '.join(table.column_names)}).")
    sources = table.column(source_column).to_pylist()
    targets = (
        table.column(target_column).to_pylist()
        if target_column and target_column in table.column_names
        else [None] * len(sources)
    )
    for i, (src, tgt) in enumerate(zip(sources, targets, strict=True)):
        pos = shard.offset + i
        if not isinstance(src, str):
            yield _record(
                shard,
                pos,
                "" if src is None else str(src),
                None,
                Reason.EMPTY if src is None else Reason.MISSING_COLUMN,
                "source is not text",
            )
            continue
        yield _check_text(shard, pos, src, tgt if isinstance(tgt, str) else None)
