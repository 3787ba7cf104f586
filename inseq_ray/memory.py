"""The memory model: the peak memory of one batch, predicted from the model and the batch's shape.

What a batch holds at its peak, by method kind (``MethodSpec.memory``):

- ``gradient``: the tensors autograd saves in the forward of R copies x B rows of L padded tokens
  (``R * B * (per_token * L + per_token_sq * L^2)``), one layer's gradients at a time in each backward
  (``R * B * L * per_token / layers``, twice: activations and their gradients), the attributed inputs and
  their gradient (``2 * R * B * L * H``), every step's combined gradients until the batch ends (``T * B * L * H``
  float32), and the head's logits for the rows it pushes at once.
- ``attention``: one eager forward returning every layer's attention weights (``B * layers * heads * L^2``) plus
  one layer's scores in flight, one layer's activations and the logits.
- ``forward``: no-grad forwards of R copies: one layer's activations at a time.

``per_token`` and ``per_token_sq`` are *measured* once per model (:meth:`MemoryProfile.measure`): three small
forwards with gradients (one row padded, as real batches are) count the bytes autograd saves, less the
weights, and a quadratic fit over three lengths separates the linear part from attention that keeps L^2
scores (eager attention, or a fused kernel that falls back to them with a padding mask). So the model holds
for any family without a table of layer shapes. The weights are counted once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from inseq_ray.engine import HEAD_CHUNK_ELEMENTS  # the logits the head materialises at once
from inseq_ray.models.adapter import ForwardInputs

if TYPE_CHECKING:
    from inseq_ray.models.adapter import ModelAdapter

PROBE_LENGTHS = (16, 32, 64)


@dataclass(frozen=True)
class MemoryProfile:
    """One model's memory facts: bytes of weights; bytes autograd saves per token of one row (linear and
    quadratic parts); hidden size, vocabulary, layers, attention heads and bytes per value."""

    weight_bytes: int
    per_token: float
    per_token_sq: float
    mask_per_token_sq: float  # what a padded batch adds: the attention mask the model builds (L^2 per row)
    hidden: int
    vocab: int
    layers: int
    heads: int
    value_bytes: int

    @classmethod
    def measure(cls, adapter: ModelAdapter) -> MemoryProfile:
        """Probe forwards with gradients at :data:`PROBE_LENGTHS` (2 rows; unpadded, then with the second row half
        padding), counting the distinct storages autograd saves that are not weights."""
        model = adapter.model
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        lengths = [float(n) for n in PROBE_LENGTHS]
        a, b, _ = _quadratic_fit(lengths, [_saved_bytes(adapter, int(n), params, False) / 2 for n in lengths])
        a_pad, _, _ = _quadratic_fit(lengths, [_saved_bytes(adapter, int(n), params, True) / 2 for n in lengths])
        cfg = model.config.get_text_config()
        return cls(
            weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
            per_token=max(b, 0.0),
            per_token_sq=max(a, 0.0),
            mask_per_token_sq=max(a_pad - a, 0.0),
            hidden=int(adapter.embed_target(torch.zeros((1, 1), dtype=torch.long, device=adapter.device)).shape[-1]),
            vocab=int(cfg.vocab_size),
            layers=_layers(cfg),
            heads=int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 1),
            value_bytes=next(model.parameters()).element_size(),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def predict_peak(
    profile: MemoryProfile, kind: str, copies: int, rows: int, length: int, steps: int, padded: bool = True
) -> dict[str, int]:
    """Bytes at the peak of one batch of ``rows`` rows padded to ``length`` tokens with ``steps`` attributed
    steps, for a method of ``kind`` stacking ``copies`` copies per forward (``padded``: some row is shorter, so
    the model builds an attention mask): name -> bytes, and ``total``."""
    p, r, b, n = profile, copies, rows, length
    layer = p.per_token / max(1, p.layers)  # bytes one layer keeps per token
    parts: dict[str, float] = {"weights": p.weight_bytes}
    if kind == "gradient":
        per_sq = p.per_token_sq + (p.mask_per_token_sq if padded else 0.0)
        parts["saved activations"] = r * b * (p.per_token * n + per_sq * n * n)
        parts["backward"] = 2 * r * b * n * layer
        parts["inputs and gradients"] = 2 * r * b * n * p.hidden * 4
        parts["step results"] = steps * b * n * p.hidden * 4
        parts["logits"] = 3 * 4 * min(r * b * steps * p.vocab, HEAD_CHUNK_ELEMENTS)
    elif kind == "attention":
        parts["attention weights"] = b * p.layers * p.heads * n * n * p.value_bytes
        parts["attention scores"] = b * p.heads * n * n * 4  # one layer's scores before the softmax, in flight
        parts["forward"] = 2 * b * n * layer
        parts["logits"] = 4 * b * n * p.vocab
    else:
        parts["forward"] = 2 * r * b * n * layer
        parts["logits"] = 4 * min(r * b * steps * p.vocab, HEAD_CHUNK_ELEMENTS)
    out = {k: int(v) for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def tokens_that_fit(
    profile: MemoryProfile,
    kind: str,
    copies: int,
    memory_bytes: int,
    share: float = 0.8,
    length: int = 1024,
    steps: int = 64,
) -> int:
    """The token budget (padded tokens x copies per forward) that fills ``share`` of ``memory_bytes`` after the
    weights and the head's logits, costed per token for rows of up to ``length`` tokens with ``steps`` steps
    (longer rows cost more per token: they go alone, as the batching does): ``max_batch_tokens`` on a GPU."""
    row = predict_peak(profile, kind, 1, 1, length, steps)
    free = share * memory_bytes - row["weights"] - 3 * 4 * HEAD_CHUNK_ELEMENTS
    per_token = (row["total"] - row["weights"] - row.get("logits", 0)) / length
    return max(1, int(free / max(per_token, 1.0)) * copies)


def batch_token_budget(max_batch_tokens: int | None, method: str, model, memory_bytes: int | None) -> int:
    """The token budget per forward: given; on a device of ``memory_bytes``, what the memory model says fits
    (:func:`inseq_ray.memory.tokens_that_fit`); on a CPU (None), the CPU default."""
    from inseq_ray.methods import get_method_spec
    from inseq_ray.settings import default_batch_tokens

    if max_batch_tokens or memory_bytes is None:
        return default_batch_tokens(max_batch_tokens, memory_bytes is not None)
    return tokens_that_fit(MemoryProfile.measure(model.adapter), get_method_spec(method).memory, 1, memory_bytes)


def device_bytes(model) -> int | None:
    """The memory of the model's input device: a GPU's total; None on a CPU (the budget stays a constant)."""
    import torch

    device = model.device
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def _saved_bytes(adapter: ModelAdapter, length: int, params: set[int], padded: bool = True) -> float:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.full((2, length), 5, dtype=torch.long, device=adapter.device)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, length // 2 :] = 0
    inputs = ForwardInputs(ids, mask)
    if adapter.is_encoder_decoder:
        inputs = ForwardInputs(
            ids[:, : length // 2], mask[:, : length // 2], ids[:, : length // 2], mask[:, : length // 2]
        )
    with torch.no_grad():
        leaf = adapter.embed_target(inputs.target_ids)
    inputs.target_embeds = leaf.requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        adapter.states(inputs)
    return float(sum(seen.values()))


def _quadratic_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """(a, b, c) with a x^2 + b x + c through three points."""
    m = torch.tensor([[v * v, v, 1.0] for v in x], dtype=torch.float64)
    a, b, c = torch.linalg.solve(m, torch.tensor(y, dtype=torch.float64)).tolist()
    return a, b, c


def _layers(cfg) -> int:
    """Transformer blocks in all stacks (encoder + decoder for encoder-decoders)."""
    if getattr(cfg, "is_encoder_decoder", False):
        enc = getattr(cfg, "encoder_layers", None) or getattr(cfg, "num_layers", None) or 1
        dec = getattr(cfg, "decoder_layers", None) or getattr(cfg, "num_decoder_layers", None) or enc
        return int(enc) + int(dec)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return 1
