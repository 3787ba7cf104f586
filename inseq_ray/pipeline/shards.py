"""Plan a corpus into deterministic shards and read one shard into records (no Ray here).

A shard is a byte range of a text/JSONL file (lines belong to the range they start in), a whole
CSV file, or one Parquet row group. Shard ids and record positions depend only on the sorted file
list and the shard size, so a rerun plans the same shards and ``seq_id``s.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import fsspec

from inseq_ray.errors import InputChangedError, Reason
from inseq_ray.pipeline.storage import refuse_credentials, storage_options
from inseq_ray.redact import redact_url

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
    file_size: int = -1  # the whole file's size and version when the run was planned (-1: not known)
    file_version: str = ""

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
    batch_size: int = 0  # the batch size its attribution succeeded in (smaller after an out-of-memory retry)
    contrast_target: str | None = None  # contrastive target text (contrast_column), when configured
    contrast_source: str | None = None  # contrastive source text (contrast_source_column, encoder-decoder)
    record_id: str | None = None  # the user's own id (id_column), as text
    record_columns: str | None = None  # keep_columns' values of the record, as a JSON object
    context: str | list[str] | None = None  # context mode: the record's input context (text, or documents)
    fields: dict[str, Any] | None = None  # prompt mode: the raw values of the prompt's columns
    prompt_spans: dict[str, tuple[int, int]] | None = None  # prompt mode: field -> token span of the prompt


COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}  # read whole-file (not seekable)
GLOB_CHARS = "*?["


def file_name_part(path: str) -> str:
    """The part of a path or URL that names the file: an HTTP(S) URL's query and fragment dropped
    (``https://h/c.txt.gz?X-Amz-Signature=...`` -> ``https://h/c.txt.gz``)."""
    if path.startswith(("http://", "https://")):
        return path.split("#", 1)[0].split("?", 1)[0]
    return path


def compression_of(path: str) -> str | None:
    """fsspec compression name from the file's suffix, or None."""
    path = file_name_part(path)
    return next((name for ext, name in COMPRESSIONS.items() if path.endswith(ext)), None)


def strip_compression(path: str) -> str:
    path = file_name_part(path)
    ext = next((e for e in COMPRESSIONS if path.endswith(e)), "")
    return path[: len(path) - len(ext)] if ext else path


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in set(FORMATS.values()):
            raise ValueError(f"Unknown input format {fmt!r}; valid: {', '.join(sorted(set(FORMATS.values())))}.")
        return fmt
    plain = strip_compression(path)
    for ext, name in FORMATS.items():
        if plain.endswith(ext):
            return name
    raise ValueError(
        f"Cannot tell the format of {redact_url(path)!r} from its extension; pass input_format (text, jsonl, csv, "
        "parquet)."
    )


def is_input_file(path: str) -> bool:
    """A file a folder input picks up: a known format (optionally compressed), not hidden or ``_``-prefixed."""
    name = path.rsplit("/", 1)[-1]
    return strip_compression(path).endswith(tuple(FORMATS)) and not name.startswith((".", "_"))


def glob_base(root: str) -> str:
    """The folder above the first path component holding a glob character (``/d/[ab]/x*.txt`` -> ``/d``)."""
    parts = root.split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    return "/".join(parts[:first])


@dataclass(frozen=True)
class InputFiles:
    """One listing of the input: the filesystem, ``path -> info`` (size, ETag/mtime) sorted by path, and the
    base that relative names are taken from. Taken once per run: planning and the input's identity share it."""

    fs: fsspec.AbstractFileSystem
    infos: dict[str, dict]
    base: str


def list_inputs(url: str) -> InputFiles:
    """Expand a file, folder or glob into its files with their details (one listing, no request per file)."""
    refuse_credentials(url, "The input URL")
    fs, root = fsspec.core.url_to_fs(url, **storage_options(url))
    if _is_http(fs):  # one file per URL: HTTP has no listing
        infos, base = _info_or_none(fs, root), root.rsplit("/", 1)[0]
    elif any(c in root for c in GLOB_CHARS) and not fs.exists(root):  # a path that exists as given is read as given
        infos = {p: i for p, i in fs.glob(root, detail=True).items() if i.get("type") == "file"}
        base = glob_base(root)
    elif fs.isdir(root):
        infos = {p: i for p, i in fs.find(root, detail=True).items() if is_input_file(p)}
        base = root.rstrip("/")
    else:
        infos, base = _info_or_none(fs, root), root.rsplit("/", 1)[0]
    if not infos:
        raise FileNotFoundError(f"No input files found at {redact_url(url)!r}.")
    return InputFiles(fs, dict(sorted(infos.items())), base)


def _info_or_none(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict]:
    try:
        return {path: fs.info(path)}
    except FileNotFoundError:
        return {}


def _is_http(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return any(p in ("http", "https") for p in protocols)


def input_identity(files: InputFiles) -> dict[str, dict]:
    """rel path -> {size, version} of every input file (version: ETag or modification time where known).

    Stored in ``_run.json`` so that a resume against changed input is refused, naming the files.
    """
    return {_rel(path, files.base): _identity(info) for path, info in files.infos.items()}


def _identity(info: dict) -> dict:
    """{size, version} of one file from its listing entry. The version is the store's own (S3/HTTP ETag, GCS
    generation); locally the modification *and* status-change times (ctime cannot be set back: an edit whose
    mtime was restored still shows)."""
    version = info.get("ETag") or info.get("etag") or info.get("generation") or ""
    if not version and "created" in info and "mtime" in info:  # fsspec's local files: created = st_ctime
        version = f"{info['mtime']}:{info['created']}"
    version = version or info.get("mtime") or info.get("LastModified") or ""
    return {"size": int(info.get("size") or 0), "version": str(version).strip('"')}


def check_unchanged(shard: Shard) -> None:
    """Raise :class:`InputChangedError` if the shard's file no longer has the size and version it was planned
    with (checked after its records are read, so a change during the read shows too)."""
    if shard.file_size < 0:
        return
    fs, path = fsspec.core.url_to_fs(shard.url, **storage_options(shard.url))
    fs.invalidate_cache(path)
    now = _identity(fs.info(path))
    then = {"size": shard.file_size, "version": shard.file_version}
    if now["size"] != then["size"] or (then["version"] and now["version"] != then["version"]):
        what = f"size {then['size']} -> {now['size']}" if now["size"] != then["size"] else "its version changed"
        raise InputChangedError(
            f"input file {shard.rel} changed while the run was using it ({what}); records read before and after "
            "would not match. Leave the input unchanged during a run (write new records to new files), then rerun."
        )


def _rel(path: str, base: str) -> str:
    """The file's key in tables, ids and ``_run.json``: relative to the input's base, redacted (a presigned
    HTTP input keeps the same key, and its records the same ``seq_id``s, when its signature is re-issued)."""
    return redact_url(path[len(base) :].lstrip("/") or path.rsplit("/", 1)[-1])


def plan_shards(
    url: str, fmt: str | None = None, shard_bytes: int = 4 << 20, files: InputFiles | None = None
) -> list[Shard]:
    """Deterministic shards of every input file (``files``: a listing already taken of ``url``)."""
    files = files or list_inputs(url)
    fs, base = files.fs, files.base
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    shards: list[Shard] = []
    for i, (path, info) in enumerate(files.infos.items()):
        full = path if protocol in ("file", "local") else fs.unstrip_protocol(path)
        rel = _rel(path, base)
        kind = detect_format(path, fmt)
        size = int(info.get("size") or 0)
        if kind in ("text", "jsonl") and compression_of(path) is None and not _is_http(fs):
            n = max(1, -(-size // shard_bytes))
            for j in range(n):
                start, end = j * shard_bytes, min(size, (j + 1) * shard_bytes)
                shards.append(Shard(f"{i:05d}-{j:05d}", full, rel, kind, start, end, size=end - start))
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                with fs.open(path, "rb") as f:
                    meta = pq.ParquetFile(f).metadata
            except pa.ArrowInvalid:  # not Parquet (or empty): one shard, read as one error row naming the file
                shards.append(Shard(f"{i:05d}-00000", full, rel, kind, 0, -1, size=size))
                continue
            offset = 0
            for j in range(meta.num_row_groups):
                rows = meta.row_group(j).num_rows
                shards.append(
                    Shard(f"{i:05d}-{j:05d}", full, rel, kind, j, j + 1, offset, size // max(1, meta.num_row_groups))
                )
                offset += rows
        elif kind == "csv" and compression_of(path) is None and size > shard_bytes:
            for j, (start, end, rows_before) in enumerate(csv_ranges(fs, path, shard_bytes)):
                shards.append(Shard(f"{i:05d}-{j:05d}", full, rel, kind, start, end, rows_before, end - start))
        else:
            shards.append(Shard(f"{i:05d}-00000", full, rel, kind, 0, -1, size=size))
    local = protocol in ("file", "local")
    ids = {(p if local else fs.unstrip_protocol(p)): _identity(info) for p, info in files.infos.items()}
    return [replace(s, file_size=ids[s.url]["size"], file_version=ids[s.url]["version"]) for s in shards]


def csv_ranges(fs, path: str, shard_bytes: int, chunk: int = 64 << 20) -> list[tuple[int, int, int]]:
    """(start, end, data rows before start) byte ranges of a CSV, cut only at record boundaries.

    A newline ends a record when an even number of quote characters precede it (an escaped quote ``""``
    counts twice, so quoted newlines never split a record). The first range starts after the header; the
    file is scanned once, vectorised, in ``chunk``-byte pieces.
    """
    import numpy as np

    ends: list[np.ndarray] = []  # byte offsets just past each record's newline
    quotes, pos = 0, 0
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            data = np.frombuffer(block, dtype=np.uint8)
            parity = (np.cumsum(data == ord('"')) + quotes) % 2
            newline = np.flatnonzero((data == ord("\n")) & (parity == 0))
            ends.append(newline + pos + 1)
            quotes += int((data == ord('"')).sum())
            pos += len(block)
    bounds = np.concatenate(ends) if ends else np.empty(0, dtype=np.int64)
    if bounds.size == 0 or bounds[-1] != pos:
        bounds = np.append(bounds, pos)  # a last record without a final newline
    header_end = int(bounds[0])
    out, start, rows = [], header_end, 0
    records = bounds[1:]  # ends of data records
    while start < pos:
        k = int(np.searchsorted(records, start + shard_bytes, side="left"))  # first record ending at/after target
        end = int(records[min(k, len(records) - 1)])
        n = int(np.searchsorted(records, end, side="right")) - int(np.searchsorted(records, start, side="right"))
        out.append((start, end, rows))
        rows += n
        start = end
    return out


Contrast = tuple[str | None, str | None]  # (contrast target, contrast source) of a record, or column names


def seq_id_for(rel: str, position: int, source: str, target: str | None, contrast: Contrast = (None, None)) -> str:
    """Stable id from the record's file, position and content (not from run order); contrast texts count
    only when present, so runs without them keep their ids."""
    key = f"{rel}\x00{position}\x00{source}\x00{target or ''}"
    if contrast != (None, None):
        key += f"\x00{contrast[0] or ''}\x00{contrast[1] or ''}"
    return hashlib.sha1(key.encode("utf-8", "backslashreplace")).hexdigest()[:20]


def _record(
    shard: Shard,
    position: int,
    source: str,
    target: str | None,
    reason: Reason | str = "",
    message: str = "",
    contrast: Contrast = (None, None),
) -> Record:
    return Record(
        seq_id=seq_id_for(shard.rel, position, source, target, contrast),
        shard=shard.shard_id,
        source_file=shard.rel,
        position=position,
        source=source,
        target=target,
        error_reason=str(reason),
        error_message=message,
        contrast_target=contrast[0],
        contrast_source=contrast[1],
    )


def read_shard(
    shard: Shard,
    source_column: str = "source",
    target_column: str | None = "target",
    contrast_columns: Contrast = (None, None),
    id_column: str | None = None,
    keep_columns: Sequence[str] = (),
    context_column: str | None = None,
    prompt_columns: Sequence[str] = (),
) -> Iterator[Record]:
    """Records of one shard; unreadable records come back with ``error_reason`` set, never raised.
    ``contrast_columns``: (contrast target column, contrast source column), each required when named;
    ``id_column``: the user's own id, carried as ``record_id`` (None where a record has none); ``keep_columns``:
    more columns carried as one JSON object, ``record_columns``; ``context_column``: each record's context (a
    string or a list of strings; a record without one is a ``missing_column`` row); ``prompt_columns``: the raw
    values of the columns a prompt is built from, carried as ``fields`` (the source column may then hold a list,
    a chat's messages, carried as its JSON text)."""
    carried = (id_column, tuple(keep_columns), context_column, tuple(prompt_columns))
    if shard.fmt in ("text", "jsonl"):
        yield from _read_lines(shard, source_column, target_column, contrast_columns, carried)
    else:  # csv, parquet
        yield from _read_table(shard, source_column, target_column, contrast_columns, carried)


BOM = b"\xef\xbb\xbf"
MAX_KEPT_CHARS = 10_000  # a refused pathological line is kept (for its error row) only up to this length


def _lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) for lines starting in [start, end); the whole file for compressed or HTTP input.

    A UTF-8 byte-order mark at the start of a file is dropped (the first line keeps position 0).
    """
    compression = compression_of(shard.url)
    streamed = compression is not None or shard.end < 0  # whole-file shards: compressed or HTTP input
    with fsspec.open(shard.url, "rb", compression=compression, **storage_options(shard.url)) as f:
        if streamed:
            pos = 0
            for raw in _iter_lines(f):
                yield pos, raw.removeprefix(BOM) if pos == 0 else raw
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
            yield pos, raw.removeprefix(BOM) if pos == 0 else raw
            pos += len(raw)


def _iter_lines(f, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines (with their newline) of a stream that only supports ``read`` (e.g. a zstd reader)."""
    rest = b""
    while block := f.read(chunk):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from (line + b"\n" for line in lines)
    if rest:
        yield rest


def _read_lines(
    shard: Shard, source_column: str, target_column: str | None, contrast_columns: Contrast, carried: Carried
) -> Iterator[Record]:
    if shard.size == 0 and shard.start == 0 and shard.end == 0:  # a zero-byte file: one row names it
        yield _record(shard, 0, "", None, Reason.EMPTY, f"{shard.rel}: empty file")
        return
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
        yield _json_record(shard, pos, line, (source_column, target_column), contrast_columns, carried)


def _json_record(
    shard: Shard,
    pos: int,
    line: str,
    columns: tuple[str, str | None],
    contrast_columns: Contrast,
    carried: Carried = (None, (), None, ()),
) -> Record:
    """One JSONL line; ``columns``: (source, target) column names; ``carried``: (id column, kept columns)."""
    source_column, target_column = columns
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return _record(shard, pos, line, None, Reason.BAD_JSON, f"invalid JSON: {e.msg}")
    except (ValueError, RecursionError) as e:  # a 5,000-digit integer, 100,000 nested brackets: this line only
        first = str(e).split(";")[0][:200]
        return _record(shard, pos, line[:MAX_KEPT_CHARS], None, Reason.BAD_JSON, f"JSON this reader refuses: {first}")
    if carried[3] and isinstance(obj, dict) and isinstance(obj.get(source_column), list | dict):  # chat messages
        obj = {**obj, source_column: json.dumps(obj[source_column], ensure_ascii=False, default=str)}
    record = _json_fields(shard, pos, line, obj, (source_column, target_column), contrast_columns)
    return _carry(record, carried, obj.get) if isinstance(obj, dict) else record


Carried = tuple[str | None, tuple[str, ...], str | None, tuple[str, ...]]  # (id, kept, context, prompt columns)


def _carry(record: Record, carried: Carried, value_of) -> Record:
    """``record`` with its id, kept columns and context filled from ``value_of(column)`` (None where absent)."""
    id_column, keep, context_column, prompt_columns = carried
    if context_column and not record.error_reason:
        _carry_context(record, context_column, value_of(context_column))
    if prompt_columns:
        values = {c: value_of(c) for c in prompt_columns}
        record.fields = {
            c: v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v for c, v in values.items()
        }
    if id_column and value_of(id_column) is not None:
        value = value_of(id_column)
        record.record_id = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if keep:
        values = {c: value_of(c) for c in keep}
        values = {c: v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v for c, v in values.items()}
        record.record_columns = json.dumps(values, ensure_ascii=False, default=str)
    return record


def _carry_context(record: Record, column: str, value) -> None:
    """A record's context: a non-empty string or list of strings (documents); otherwise the record is an error."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    documents = value if isinstance(value, list) else None
    if isinstance(value, str) and value.strip():
        record.context = value
    elif documents and all(isinstance(d, str) for d in documents) and any(d.strip() for d in documents):
        record.context = list(documents)
    else:
        record.error_reason = Reason.MISSING_COLUMN
        record.error_message = f"no context text (a string or a list of strings) in column {column!r}"


def _json_fields(
    shard: Shard, pos: int, line: str, obj, columns: tuple[str, str | None], contrast_columns: Contrast
) -> Record:
    source_column, target_column = columns
    if not isinstance(obj, dict) or not isinstance(obj.get(source_column), str):
        return _record(shard, pos, line, None, Reason.MISSING_COLUMN, f"no string column {source_column!r}")
    target = obj.get(target_column) if target_column else None
    missing = next((c for c in contrast_columns if c and not isinstance(obj.get(c), str)), None)
    if missing:
        return _record(shard, pos, line, None, Reason.MISSING_COLUMN, f"no string column {missing!r} (contrast)")
    contrast_target, contrast_source = (obj[c] if c else None for c in contrast_columns)
    text = target if isinstance(target, str) else None
    return _check_text(shard, pos, obj[source_column], text, (contrast_target, contrast_source))


def _check_text(shard: Shard, pos: int, source: str, target: str | None, contrast: Contrast = (None, None)) -> Record:
    texts = (("source", source), ("target", target), ("contrast target", contrast[0]), ("contrast source", contrast[1]))
    for name, text in texts:
        if text is not None and not _encodable(text):
            return _record(
                shard,
                pos,
                escape_unencodable(source),
                None if target is None else escape_unencodable(target),
                Reason.INVALID_UTF8,
                f"{name} text holds code points UTF-8 cannot encode (e.g. a lone surrogate from a JSON \\ud800 escape); "
                "they are shown backslash-escaped here",
            )
    for name, text in texts:
        if text is not None and not text.strip():
            return _record(shard, pos, source, target, Reason.EMPTY, f"empty {name} text", contrast)
    return _record(shard, pos, source, target, contrast=contrast)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_unencodable(text: str) -> str:
    """``text`` with code points UTF-8 cannot encode (lone surrogates) backslash-escaped; others unchanged."""
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _csv_bytes(f, shard: Shard) -> bytes:
    """The whole file, or the file's header followed by the shard's byte range."""
    if shard.end < 0:
        return f.read()
    header = _first_record(f)
    f.seek(shard.start)
    return header + f.read(shard.end - shard.start)


def _first_record(f) -> bytes:
    """The header record (up to its first newline outside quotes)."""
    f.seek(0)
    out, quotes = b"", 0
    while block := f.read(1 << 16):
        for k, byte in enumerate(block):
            quotes += byte == ord('"')
            if byte == ord("\n") and quotes % 2 == 0:
                return out + block[: k + 1]
        out += block
    return out


def _read_table(
    shard: Shard, source_column: str, target_column: str | None, contrast_columns: Contrast, carried: Carried
) -> Iterator[Record]:
    """CSV files and Parquet row groups; malformed CSV rows, rows that are not UTF-8 and a missing source column
    become error records, and a file that cannot be parsed at all (empty, not CSV/Parquet) is one error record."""
    import pyarrow as pa

    bad_rows: list = []
    try:
        table = _table(shard, bad_rows)
    except pa.ArrowInvalid as e:  # parse errors only: a store's I/O error fails the shard (retried, resumable)
        first = (str(e).strip().splitlines() or ["unreadable"])[0][:200]
        what = "empty file" if shard.size == 0 else f"cannot read it as {shard.fmt}: {first}"
        yield _record(shard, shard.offset, "", None, Reason.EMPTY if shard.size == 0 else Reason.BAD_INPUT,
                      f"{shard.rel}: {what}")  # fmt: skip
        return
    for row in bad_rows:  # position: the row's index among the file's data rows (0-based), malformed ones included
        text = row.text or ""
        msg = f"CSV row has {row.actual_columns} fields, the header has {row.expected_columns}"
        yield _record(shard, shard.offset + max(0, int(row.number or 2) - 2), text, None, Reason.BAD_INPUT, msg)
    for column, flag in (
        (source_column, "--source-column"),
        *((c, "--contrast-column") for c in contrast_columns if c),
    ):
        if column not in table.column_names:
            msg = f"{shard.rel} has no column {column!r} (columns: {', '.join(table.column_names)}): pass {flag}"
            yield _record(shard, shard.offset, ",".join(table.column_names), None, Reason.MISSING_COLUMN, msg)
            return
    records = _table_records(
        shard, table, (source_column, target_column), contrast_columns, _positions(bad_rows), bool(carried[3])
    )
    wanted = [c for c in (carried[0], *carried[1], carried[2], *carried[3]) if c and c in table.column_names]
    if carried[2] and carried[2] not in wanted:  # the context column is required: every record says so
        wanted.append(carried[2])
    if not wanted:
        yield from records
        return
    positions = _row_positions(shard, table.num_rows, _positions(bad_rows))
    rows = {c: dict(zip(positions, _column(table, c), strict=True)) for c in wanted if c in table.column_names}
    for record in records:
        yield _carry(record, carried, lambda c, p=record.position: rows[c].get(p) if c in rows else None)


def _table(shard: Shard, bad_rows: list):
    """The shard's rows as an Arrow table; malformed CSV rows are skipped and appended to ``bad_rows``.
    String columns are not checked for UTF-8 here: a column holding invalid bytes arrives as binary and is
    decoded row by row (one ``invalid_utf8`` row per bad value, never the whole file)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    with fsspec.open(shard.url, "rb", compression=compression_of(shard.url), **storage_options(shard.url)) as f:
        if shard.fmt == "csv":
            opts = pcsv.ParseOptions(invalid_row_handler=lambda row: _skip(bad_rows, row))
            convert = pcsv.ConvertOptions(check_utf8=False, strings_can_be_null=False)
            read = pcsv.ReadOptions(use_threads=False)  # malformed rows keep their row numbers (threads lose them)
            data = io.BytesIO(_csv_bytes(f, shard))
            return pcsv.read_csv(data, read_options=read, parse_options=opts, convert_options=convert)
        return pq.ParquetFile(f).read_row_group(shard.start)


def _positions(bad_rows: list) -> list[int]:
    """0-based data-row indices (within the shard) of the malformed CSV rows that were skipped."""
    return sorted(max(0, int(row.number or 2) - 2) for row in bad_rows)


def _column(table, column: str) -> list:
    """A column as Python values; text as bytes (CSV text is not UTF-8-checked on read: each value is decoded on
    its own, so a bad byte sequence is its row's error)."""
    import pyarrow as pa

    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.large_binary())  # a view of the same bytes, no validation
    return col.to_pylist()


def _table_records(
    shard: Shard, table, columns: tuple[str, str | None], contrast_columns: Contrast, skipped: list[int], lists=False
) -> Iterator[Record]:
    """One record per row; ``skipped``: data-row indices of malformed rows already reported (a row's position is its
    index among all the data rows of the file, so rows after a malformed one keep their own); ``lists``: a list
    in the source column (a chat's messages) is carried as its JSON text."""
    source_column, target_column = columns
    n = table.num_rows
    sources = _column(table, source_column)
    if lists:
        sources = [json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, list | dict) else v for v in sources]
    targets = _column(table, target_column) if target_column and target_column in table.column_names else [None] * n
    contrasts = list(zip(*(_column(table, c) if c else [None] * n for c in contrast_columns)))
    names = (source_column, target_column, *contrast_columns)
    positions = _row_positions(shard, n, skipped)
    for pos, src, tgt, contrast in zip(positions, sources, targets, contrasts, strict=True):
        bad = next((name for name, v in zip(names, (src, tgt, *contrast)) if name and isinstance(v, bytes)
                    and not _utf8(v)), None)  # fmt: skip
        if bad:
            raw = src.decode("utf-8", "backslashreplace") if isinstance(src, bytes) else str(src)
            yield _record(shard, pos, raw, None, Reason.INVALID_UTF8, f"column {bad!r} is not UTF-8 in this row")
            continue
        src, tgt = _text(src), _text(tgt)
        contrast = tuple(_text(v) for v in contrast)
        missing = next((c for c, v in zip(contrast_columns, contrast) if c and not isinstance(v, str)), None)
        if missing and isinstance(src, str):
            yield _record(shard, pos, src, None, Reason.MISSING_COLUMN, f"no string value in column {missing!r}")
            continue
        if not isinstance(src, str):
            yield _record(
                shard,
                pos,
                "" if src is None else str(src),
                None,
                Reason.EMPTY if src is None else Reason.MISSING_COLUMN,
                f"column {source_column!r} holds no text in this row" + ("" if src is None else f" ({src!r})"),
            )
            continue
        yield _check_text(shard, pos, src, tgt if isinstance(tgt, str) else None, contrast)


def _row_positions(shard: Shard, n: int, skipped: list[int]) -> list[int]:
    """The positions of a table's ``n`` parsed rows (data-row indices in the file, malformed rows skipped)."""
    out, index, skip = [], 0, iter(skipped)
    next_skip = next(skip, None)
    for _ in range(n):
        while next_skip is not None and next_skip <= index:
            index, next_skip = index + 1, next(skip, None)
        out.append(shard.offset + index)
        index += 1
    return out


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text(value):
    """Decoded text for bytes (already checked to be UTF-8), the value itself otherwise."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _skip(bad_rows: list, row) -> str:
    """pyarrow's invalid-row handler: note the malformed row, skip it."""
    bad_rows.append(row)
    return "skip"
