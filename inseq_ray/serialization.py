"""Save/load attribution outputs as JSON (optionally gzipped) through fsspec.

Tensors are stored as ``{"dtype", "shape", "data": base64(little-endian bytes)}``; loading builds
plain tensors and dataclasses and never imports anything named inside a file. Loading refuses files
whose (decompressed) size exceeds :data:`MAX_FILE_BYTES` (a gzip bomb stops there, not in memory)
or whose JSON nests deeper than Python's parser allows; every failure is one
:class:`~inseq_ray.errors.AttributionFileError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from typing import Any

import fsspec
import numpy as np
import torch

from inseq_ray.errors import AttributionFileError
from inseq_ray.inseq_format import from_inseq_dict, is_inseq_dict, to_inseq_dict
from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq_ray.redact import redact_url
from inseq_ray.tokens import TokenWithId

MAX_FILE_BYTES = 256 << 20  # JSON bytes after decompression; a pipeline object is ~1 KB, granular ones MBs
FORMAT = "inseq_ray.feature_attribution"
VERSION = 1
FORMATS = ("inseq_ray", "inseq")
PRECISIONS = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8": torch.float8_e4m3fn,
}


def encode_tensor(t: torch.Tensor | None, precision: str = "float32") -> dict | None:
    """Tensor -> JSON-able dict at ``precision`` (NaN preserved)."""
    if t is None:
        return None
    dtype = PRECISIONS[precision]
    data = t.detach().to("cpu", dtype).contiguous()
    raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
    return {"dtype": precision, "shape": list(t.shape), "data": base64.b64encode(raw).decode("ascii")}


def decode_tensor(d: dict | None) -> torch.Tensor | None:
    """Inverse of :func:`encode_tensor`; always returns float32."""
    if d is None:
        return None
    if d["dtype"] not in PRECISIONS:
        raise ValueError(f"Unknown tensor dtype {d['dtype']!r} in file; valid: {', '.join(PRECISIONS)}.")
    raw = np.frombuffer(base64.b64decode(d["data"]), dtype=np.uint8).copy()
    t = torch.from_numpy(raw).view(PRECISIONS[d["dtype"]]) if raw.size else torch.empty(0, dtype=PRECISIONS[d["dtype"]])
    return t.reshape(d["shape"]).float()


def sequence_to_dict(seq: FeatureAttributionSequenceOutput, precision: str = "float32") -> dict:
    return {
        "source": [list(t) for t in seq.source],
        "target": [list(t) for t in seq.target],
        "source_attributions": encode_tensor(seq.source_attributions, precision),
        "target_attributions": encode_tensor(seq.target_attributions, precision),
        "step_scores": {k: encode_tensor(v, "float32") for k, v in seq.step_scores.items()},
        "sequence_scores": {k: encode_tensor(v, precision) for k, v in seq.sequence_scores.items()},
        "attr_pos_start": seq.attr_pos_start,
        "attr_pos_end": seq.attr_pos_end,
        "attribution_dims": list(seq.attribution_dims),
    }


def _scores(d: dict | None, name: str) -> torch.Tensor:
    """A step or sequence score's tensor (never null)."""
    t = decode_tensor(d)
    if t is None:
        raise ValueError(f"score {name!r} holds no tensor")
    return t


def sequence_from_dict(d: dict) -> FeatureAttributionSequenceOutput:
    return FeatureAttributionSequenceOutput(
        source=[TokenWithId(*t) for t in d["source"]],
        target=[TokenWithId(*t) for t in d["target"]],
        source_attributions=decode_tensor(d["source_attributions"]),
        target_attributions=decode_tensor(d["target_attributions"]),
        step_scores={k: _scores(v, k) for k, v in d["step_scores"].items()},
        sequence_scores={k: _scores(v, k) for k, v in d.get("sequence_scores", {}).items()},
        attr_pos_start=int(d["attr_pos_start"]),
        attr_pos_end=int(d["attr_pos_end"]),
        attribution_dims=tuple(d.get("attribution_dims", ())),
    )


def jsonable(value: Any) -> Any:
    """Info values -> JSON types (tuples become lists, objects their repr)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return getattr(value, "__name__", None) or repr(value)


def output_to_dict(out: FeatureAttributionOutput, precision: str = "float32") -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "info": jsonable(out.info),
        "sequence_attributions": [sequence_to_dict(s, precision) for s in out.sequence_attributions],
    }


def output_from_dict(d: dict) -> FeatureAttributionOutput:
    if is_inseq_dict(d):
        return from_inseq_dict(d)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise AttributionFileError(f"Neither an inseq_ray nor an Inseq attribution file (format={fmt!r}).")
    if d.get("version", 0) > VERSION:
        raise AttributionFileError(
            f"File version {d['version']} is newer than this inseq_ray ({VERSION}); upgrade inseq_ray."
        )
    return FeatureAttributionOutput([sequence_from_dict(s) for s in d["sequence_attributions"]], d.get("info", {}))


def to_bytes(
    out: FeatureAttributionOutput, compress: bool, precision: str = "float32", format: str = FORMATS[0]
) -> bytes:
    """Serialised (and optionally gzipped, deterministic) bytes of ``out`` in ``format`` ("inseq_ray", "inseq")."""
    if format == "inseq":
        data = to_inseq_dict(out, jsonable(out.info), precision)
    else:
        data = output_to_dict(out, precision)
    text = json.dumps(data, separators=(",", ":")).encode()  # key order kept (step scores)
    return gzip.compress(text, compresslevel=6, mtime=0) if compress else text


def from_bytes(raw: bytes, name: str = "<bytes>", limit: int = MAX_FILE_BYTES) -> FeatureAttributionOutput:
    """Parse saved bytes (gzip detected from the content); any problem is one :class:`AttributionFileError`."""
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip_capped(raw, name, limit)
    if len(raw) > limit:
        raise AttributionFileError(
            f"{name}: {len(raw):,} bytes is over the {limit:,}-byte limit for attribution files."
        )
    check_parse_cost(raw, name, limit)
    try:
        return output_from_dict(json.loads(raw))
    except AttributionFileError as e:
        raise AttributionFileError(f"{name}: {e}") from None
    except RecursionError:
        raise AttributionFileError(f"{name}: JSON nested too deeply to be an attribution file.") from None
    except Exception as e:  # any parser's own error (safetensors', numpy's, torch's): one line naming the file
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise AttributionFileError(f"{name}: not a valid attribution file ({type(e).__name__}: {first}).") from None


PARSE_MEMORY_FACTOR = 4  # parsing may take at most this many times the file-size limit in Python objects


def check_parse_cost(raw: bytes, name: str, limit: int) -> None:
    """Refuse, before parsing, JSON whose Python objects would take over ``PARSE_MEMORY_FACTOR x limit`` bytes.

    A container costs Python at least 64 bytes and an element a pointer plus its object (16 bytes), where JSON
    spends 1-2 bytes on them: 250 MiB of ``[{},{},...]`` would take several GB. Attribution files are mostly
    base64 tensor strings (a byte per byte), so they are far below this bound. The count includes brackets and
    commas inside strings: it can only over-estimate."""
    containers = raw.count(b"{") + raw.count(b"[")
    cost = 64 * containers + 16 * raw.count(b",") + len(raw)
    if cost > PARSE_MEMORY_FACTOR * limit:
        raise AttributionFileError(
            f"{name}: its JSON structure ({containers:,} objects/arrays in {len(raw):,} bytes) would take about "
            f"{cost / 2**20:,.0f} MiB to parse, over the {PARSE_MEMORY_FACTOR * limit / 2**20:,.0f} MiB allowed for "
            "attribution files (max_bytes raises it)."
        )


def _gunzip_capped(raw: bytes, name: str, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes; a file that expands further is refused before it fills memory."""
    import io
    import zlib

    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise AttributionFileError(f"{name}: broken gzip data ({e}).") from None
    if len(out) > limit:
        raise AttributionFileError(f"{name}: decompresses to over {limit:,} bytes, the limit for attribution files.")
    return out


def save(
    out: FeatureAttributionOutput,
    path: str,
    overwrite: bool = False,
    compress: bool = False,
    split_sequences: bool = False,
    scores_precision: str = "float32",
    format: str = "inseq_ray",
) -> list[str]:
    """Write ``out`` to ``path`` (any fsspec URL); with ``split_sequences``, ``<stem>_<i>.json[.gz]``.

    ``format="inseq"`` writes Inseq's own format, which ``inseq.FeatureAttributionOutput.load`` reads (pass it
    ``decompress=True`` for a gzipped file); loading here reads either format.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown format {format!r}; valid: {', '.join(FORMATS)}.")
    if scores_precision not in PRECISIONS:
        raise ValueError(f"Unknown scores_precision {scores_precision!r}; valid: {', '.join(PRECISIONS)}.")
    if split_sequences:
        stem = str(path).split(".json")[0]
        suffix = ".json.gz" if compress else ".json"
        items = [
            (f"{stem}_{i}{suffix}", FeatureAttributionOutput([seq], _info_for(out.info, i)))
            for i, seq in enumerate(out.sequence_attributions)
        ]
    else:
        items = [(str(path), out)]
    for target, _ in items:
        fs, fpath = fsspec.core.url_to_fs(target)
        if fs.exists(fpath) and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
    for target, item in items:
        with fsspec.open(target, "wb", auto_mkdir=True) as f:
            f.write(to_bytes(item, compress, scores_precision, format))
    return [t for t, _ in items]


def _info_for(info: dict, i: int) -> dict:
    """Info of sequence ``i`` alone: list-valued text fields keep only its entry."""
    one = dict(info)
    for key in ("input_texts", "generated_texts"):
        if isinstance(info.get(key), list) and i < len(info[key]):
            one[key] = [info[key][i]]
    return one


def load(path: str, decompress: bool | None = None, max_bytes: int = MAX_FILE_BYTES) -> FeatureAttributionOutput:
    """Read a saved output (any fsspec URL, e.g. a pipeline ``object_uri``); gzip is detected from the content
    (``decompress`` is accepted for Inseq parity). Files over ``max_bytes`` (after decompression) are refused
    with :class:`AttributionFileError`; raise it for very large granular files you trust."""
    name = redact_url(str(path))
    try:
        with fsspec.open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise AttributionFileError(f"{name}: no such file.") from None
    return from_bytes(raw, name, max_bytes)
