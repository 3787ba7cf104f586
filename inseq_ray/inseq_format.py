"""Inseq's attribution file format, written and read as plain data.

Inseq (0.7) saves ``FeatureAttributionOutput`` as JSON in which every object is
``{"__instance_type__": [module, class], "attributes": {...}}`` and every tensor is a base64 string of a
safetensors blob holding one tensor named ``"attribution"``. Inseq's loader imports the named classes; ours
never imports or executes anything named in a file: it accepts only the class names below, and reads tensors
with safetensors (a pure data format) or, for files of older Inseq versions, json_tricks' ``__ndarray__``.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import safetensors.torch
import torch

from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput, TokenWithId

MODULE = "inseq.data.attribution"
OUTPUT = "FeatureAttributionOutput"
SEQUENCE_CLASSES = {  # Inseq's sequence class <- our attribution_dims
    (): "CoarseFeatureAttributionSequenceOutput",
    ("hidden",): "GranularFeatureAttributionSequenceOutput",
}
MULTI = "MultiDimensionalFeatureAttributionSequenceOutput"
KNOWN = {OUTPUT, "FeatureAttributionSequenceOutput", MULTI, *SEQUENCE_CLASSES.values()}
TOKEN = ["inseq.utils.typing", "TokenWithId"]
PRECISIONS = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8": torch.float8_e4m3fn,
}


def is_inseq_dict(d: Any) -> bool:
    """Whether parsed JSON is an Inseq-saved output."""
    return isinstance(d, dict) and isinstance(d.get("__instance_type__"), list)


# ---- writing -------------------------------------------------------------------------------------------------
def to_inseq_dict(out: FeatureAttributionOutput, info: dict, precision: str = "float32") -> dict:
    """``out`` as Inseq's JSON structure (``info`` already JSON-able)."""
    if precision not in PRECISIONS:
        raise ValueError(f"scores_precision={precision!r} cannot be written for Inseq; valid: {', '.join(PRECISIONS)}.")
    return _instance(
        MODULE,
        OUTPUT,
        {
            "info": info,
            "sequence_attributions": [_sequence(s, precision) for s in out.sequence_attributions],
            "step_attributions": None,
        },
    )


def _sequence(seq: FeatureAttributionSequenceOutput, precision: str) -> dict:
    cls = SEQUENCE_CLASSES.get(seq.attribution_dims, MULTI)
    return _instance(
        MODULE,
        cls,
        {
            "attr_pos_end": seq.attr_pos_end,
            "attr_pos_start": seq.attr_pos_start,
            "sequence_scores": {k: _blob(v, precision) for k, v in seq.sequence_scores.items()},
            "source": [_token(t) for t in seq.source],
            "source_attributions": _blob(seq.source_attributions, precision),
            "step_scores": {k: _blob(v, "float32") for k, v in seq.step_scores.items()},
            "target": [_token(t) for t in seq.target],
            "target_attributions": _blob(seq.target_attributions, precision),
        },
    )


def _instance(module: str, cls: str, attributes: dict) -> dict:
    return {"__instance_type__": [module, cls], "attributes": attributes}


def _token(t: TokenWithId) -> dict:
    return _instance(TOKEN[0], TOKEN[1], {"id": int(t.id), "token": t.token})


def _blob(t: torch.Tensor | None, precision: str) -> str | None:
    """Tensor -> base64 of a safetensors blob with one tensor named "attribution" (Inseq's encoding)."""
    if t is None:
        return None
    data = t.detach().to("cpu", PRECISIONS[precision]).contiguous()
    return base64.b64encode(safetensors.torch.save({"attribution": data})).decode("ascii")


# ---- reading -------------------------------------------------------------------------------------------------
def from_inseq_dict(d: dict) -> FeatureAttributionOutput:
    """An Inseq-saved output as ours, reading only data (see the module docstring)."""
    attrs = _attributes(d, OUTPUT)
    seqs = [_read_sequence(s) for s in attrs.get("sequence_attributions") or []]
    info = attrs.get("info") or {}
    return FeatureAttributionOutput(seqs, dict(info) if isinstance(info, dict) else {})


def _attributes(d: Any, *expected: str) -> dict:
    kind = d.get("__instance_type__") if isinstance(d, dict) else None
    if not (isinstance(kind, list) and len(kind) == 2 and kind[1] in (expected or KNOWN)):
        raise ValueError(f"unexpected object {kind!r} where Inseq writes {' or '.join(expected) or 'an output'}")
    return d.get("attributes") or {}


def _read_sequence(d: dict) -> FeatureAttributionSequenceOutput:
    kind = d.get("__instance_type__", [None, None])[1] if isinstance(d, dict) else None
    a = _attributes(d, *(KNOWN - {OUTPUT}))
    src, tgt = _tensor(a.get("source_attributions")), _tensor(a.get("target_attributions"))
    ref = src if src is not None else tgt
    extra = 0 if ref is None else ref.dim() - 2
    dims = _dims(kind, extra)
    return FeatureAttributionSequenceOutput(
        source=[_read_token(t) for t in a.get("source") or []],
        target=[_read_token(t) for t in a.get("target") or []],
        source_attributions=src,
        target_attributions=tgt,
        step_scores={k: _scores(v, k) for k, v in (a.get("step_scores") or {}).items()},
        sequence_scores={k: _scores(v, k) for k, v in (a.get("sequence_scores") or {}).items()},
        attr_pos_start=int(a["attr_pos_start"]),
        attr_pos_end=int(a["attr_pos_end"]),
        attribution_dims=dims,
    )


def _dims(kind: str | None, extra: int) -> tuple[str, ...]:
    """Our attribution_dims for Inseq's class and the tensors' trailing dimensions."""
    if extra == 0:
        return ()
    if kind == "GranularFeatureAttributionSequenceOutput" and extra == 1:
        return ("hidden",)
    return {1: ("layers",), 2: ("layers", "heads")}.get(extra, tuple(f"dim{i}" for i in range(extra)))


def _read_token(d: Any) -> TokenWithId:
    if isinstance(d, dict) and "__instance_type__" in d:
        kind = d["__instance_type__"]
        if kind != TOKEN:
            raise ValueError(f"unexpected object {kind!r} where Inseq writes a TokenWithId")
        d = d.get("attributes") or {}
    if isinstance(d, dict):
        return TokenWithId(str(d["token"]), int(d["id"]))
    token, idx = d  # a plain [token, id] pair
    return TokenWithId(str(token), int(idx))


SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                        "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip


def check_safetensors(blob: bytes) -> None:
    """Refuse a safetensors blob whose header does not describe exactly the bytes it holds, before anything is
    allocated from it (a header may claim any size: 100 GB, offsets past the end, a dtype that does not fit)."""
    if len(blob) < 8:
        raise ValueError("a tensor blob is shorter than a safetensors header")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise ValueError(f"a tensor blob's header claims {n:,} bytes, more than the blob's {len(blob) - 8:,}")
    header = json.loads(blob[8 : 8 + n])
    data = len(blob) - 8 - n
    if not isinstance(header, dict):
        raise ValueError("a tensor blob's header is not a JSON object")
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_ITEMSIZE or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {key!r}: dtype {dtype!r} or shape {shape!r} is not valid")
        want = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if not (0 <= begin <= end <= data) or end - begin != want:
            raise ValueError(f"tensor {key!r}: offsets {begin}..{end} do not hold {shape} x {dtype} in {data:,} bytes")


def _scores(v: Any, name: str) -> torch.Tensor:
    """A step or sequence score's tensor (never null)."""
    t = _tensor(v)
    if t is None:
        raise ValueError(f"score {name!r} holds no tensor")
    return t


def _tensor(v: Any) -> torch.Tensor | None:
    """A tensor as Inseq stores it: base64 safetensors (0.6+), or json_tricks' ``__ndarray__`` (older)."""
    if v is None:
        return None
    if isinstance(v, str):
        blob = base64.b64decode(v, validate=True)
        check_safetensors(blob)
        tensors = safetensors.torch.load(blob)
        if set(tensors) != {"attribution"}:
            raise ValueError(f"a tensor blob holds {sorted(tensors)}, expected one named 'attribution'")
        return tensors["attribution"].float()
    if isinstance(v, dict) and "__ndarray__" in v:
        data, dtype = v["__ndarray__"], np.dtype(v.get("dtype", "float32"))
        if dtype.kind not in "fiu":
            raise ValueError(f"unsupported array dtype {dtype}")
        if isinstance(data, str):  # compact: base64 of the raw buffer
            array = np.frombuffer(base64.b64decode(data, validate=True), dtype=dtype).reshape(v["shape"])
        else:
            array = np.asarray(data, dtype=dtype)
        return torch.from_numpy(array.astype(np.float32))
    raise ValueError(f"unrecognised tensor encoding ({type(v).__name__})")
