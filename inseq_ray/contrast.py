"""Contrastive inputs (Inseq's ``contrast_*`` arguments): validated once per call, prepared once per batch.

For a sequence with target tokens ``T`` attributed at positions ``p`` and contrast target tokens ``C``,
step ``p`` is compared with contrast position ``j(p)``: the contrast forward's next-token logits after
``C[:j]`` (with ``contrast_sources`` as encoder input, else the original source) and the contrast target
``C[j]``. ``j(p)`` comes from ``contrast_targets_alignments`` (pairs ``(p, j)`` over ``out.target``
positions; the smallest ``j`` per ``p``), ``"auto"`` (equal tokens matched in order, as a diff would),
or, for steps without a pair, right alignment: the k-th step from the end of the attributed span meets
the k-th token from the end of ``C`` (Inseq's fill rule; equal-length targets align 1:1).

One forward of all contrast inputs of a batch gives every step's contrast logits; none runs when only
the contrast ids are needed (an attributed contrastive function without ``contrast_force_inputs``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from inseq_ray.errors import InputError
from inseq_ray.models.adapter import ForwardInputs, ModelAdapter
from inseq_ray.models.encoding import EncodedBatch, check_texts, pad_right

CONTRAST_ARGS = (
    "contrast_sources",
    "contrast_targets",
    "contrast_targets_alignments",
    "contrast_force_inputs",
    "skip_special_tokens",
)
Pairs = list[tuple[int, int]]


@dataclass(frozen=True)
class ContrastSpec:
    """The contrast arguments of one ``attribute()`` call, one entry per input where per-input."""

    sources: list[str] | None
    targets: list[str] | None
    alignments: list[Pairs] | str | None  # per input, "auto", or None (right alignment)
    force_inputs: bool = False
    skip_special_tokens: bool = False

    @classmethod
    def from_kwargs(cls, kwargs: dict, n_inputs: int, is_encoder_decoder: bool) -> ContrastSpec | None:
        """Validate ``kwargs`` (the CONTRAST_ARGS given); None when no contrast input was given."""
        sources = _texts(kwargs.get("contrast_sources"), n_inputs, "contrast_sources")
        targets = _texts(kwargs.get("contrast_targets"), n_inputs, "contrast_targets")
        alignments = kwargs.get("contrast_targets_alignments")
        if sources is not None and not is_encoder_decoder:
            raise ValueError(
                "contrast_sources apply to encoder-decoder models; for a decoder-only model give contrast_targets "
                "holding the contrastive prompt and continuation."
            )
        if alignments is not None and targets is None:
            raise ValueError("contrast_targets_alignments needs contrast_targets.")
        if sources is None and targets is None:
            return None
        return cls(
            sources,
            targets,
            _alignments(alignments, n_inputs),
            bool(kwargs.get("contrast_force_inputs", False)),
            bool(kwargs.get("skip_special_tokens", False)),
        )

    def select(self, idx: list[int]) -> ContrastSpec:
        """The entries of inputs ``idx`` (a batch)."""

        def pick(values):
            return None if values is None or isinstance(values, str) else [values[i] for i in idx]

        alignments = self.alignments if isinstance(self.alignments, str) else pick(self.alignments)
        return ContrastSpec(
            pick(self.sources), pick(self.targets), alignments, self.force_inputs, self.skip_special_tokens
        )


def _texts(value, n: int, name: str) -> list[str] | None:
    if value is None:
        return None
    texts = [value] if isinstance(value, str) else list(value)
    if len(texts) != n:
        raise ValueError(f"{name} has {len(texts)} entries for {n} input_texts: give one per input.")
    check_texts(texts, name)
    return texts


def _alignments(value, n: int) -> list[Pairs] | str | None:
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"contrast_targets_alignments={value!r}: give 'auto' or (target, contrast) position pairs.")
    value = list(value)
    if value and _is_pair(value[0]):
        value = [value]  # one input's pairs
    if len(value) != n or not all(isinstance(v, (list, tuple)) and all(_is_pair(p) for p in v) for v in value):
        raise ValueError(
            "contrast_targets_alignments must be 'auto', a list of (target_pos, contrast_pos) pairs for one input, "
            f"or one such list per input ({n} here)."
        )
    return [[(int(a), int(b)) for a, b in v] for v in value]


def _is_pair(p) -> bool:
    return isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) for x in p)


# ---- per batch ------------------------------------------------------------------------------------
@dataclass
class ContrastBatch:
    """A batch's contrast side. ids (B, T): contrast target of each step; logits (B, T, V) or None;
    labels: per sequence, target position -> Inseq's ``"contrast → original"`` label where they differ."""

    ids: torch.Tensor
    logits: torch.Tensor | None
    labels: list[dict[int, str]]


def prepare_contrast(
    adapter: ModelAdapter,
    tokenizer,
    batch: EncodedBatch,
    spec: ContrastSpec,
    decoder_start_id: int | None,
    need_logits: bool,
) -> ContrastBatch:
    """Tokenise the batch's contrast inputs, align every step, run one no-grad forward if logits are needed."""
    add_special = not spec.skip_special_tokens
    rows = range(batch.size)
    originals = [batch.target_ids[b, : int(batch.target_mask[b].sum())].tolist() for b in rows]
    if spec.targets is None:
        contrast = originals
    elif batch.source_ids is not None:
        encoded = tokenizer(text_target=spec.targets, add_special_tokens=add_special)["input_ids"]
        contrast = [[decoder_start_id, *ids] for ids in encoded]
    else:
        contrast = tokenizer(spec.targets, add_special_tokens=add_special)["input_ids"]
    starts, ends = batch.attr_start.tolist(), batch.attr_end.tolist()
    n_steps = max(e - s for s, e in zip(starts, ends, strict=True))
    aligned = torch.ones((batch.size, n_steps), dtype=torch.long)  # (B, T) contrast positions j
    labels: list[dict[int, str]] = []
    for b in rows:
        pairs = _pairs_for(spec, b, originals[b], contrast[b], tokenizer)
        js = _aligned_positions(pairs, starts[b], ends[b], len(contrast[b]), b, identity=spec.targets is None)
        aligned[b, : len(js)] = torch.tensor(js)
        labels.append(_labels(tokenizer, originals[b], contrast[b], starts[b], js) if spec.targets else {})
    device = batch.target_ids.device
    if spec.targets is None:  # the batch's own targets, already padded on the device
        ids_padded, mask = batch.target_ids, batch.target_mask
    else:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids_padded, mask = (t.to(device) for t in pad_right(contrast, pad))
    aligned = aligned.to(device)
    contrast_ids = ids_padded.gather(1, aligned)  # (B, T)
    logits = None
    if need_logits:
        logits = _contrast_logits(adapter, tokenizer, batch, spec, ids_padded, mask, aligned)
    return ContrastBatch(contrast_ids, logits, labels)


def _pairs_for(spec: ContrastSpec, b: int, original: list[int], contrast: list[int], tokenizer) -> Pairs:
    if spec.alignments is None or spec.targets is None:
        return []
    if isinstance(spec.alignments, str):  # "auto" (the only string _alignments accepts)
        a, c = tokenizer.convert_ids_to_tokens(original), tokenizer.convert_ids_to_tokens(contrast)
        matcher = difflib.SequenceMatcher(None, a, c, autojunk=False)
        return [(i + k, j + k) for i, j, size in matcher.get_matching_blocks() for k in range(size)]
    return spec.alignments[b]


def _aligned_positions(pairs: Pairs, start: int, end: int, c_len: int, b: int, identity: bool) -> list[int]:
    """Contrast position j for each attributed target position p in [start, end)."""
    out = []
    for p in range(start, end):
        if identity:
            j = p
        else:
            matches = [j for i, j in pairs if i == p and 0 <= j < c_len]
            j = min(matches) if matches else c_len - (end - p)  # right alignment for steps without a pair
        if not 1 <= j < c_len:
            raise InputError(
                f"contrast_targets[{b}] has no token aligned with target position {p} (contrast length {c_len}): "
                "give a longer contrast target or contrast_targets_alignments pairs for that step."
            )
        out.append(j)
    return out


def _labels(tokenizer, original: list[int], contrast: list[int], start: int, js: list[int]) -> dict[int, str]:
    """Inseq's contrastive token labels: ``"<contrast token> → <original token>"`` where the two differ."""
    orig_tokens = tokenizer.convert_ids_to_tokens(original)
    c_tokens = tokenizer.convert_ids_to_tokens(contrast)
    out = {}
    for offset, j in enumerate(js):
        p = start + offset
        if c_tokens[j] != orig_tokens[p]:
            out[p] = f"{c_tokens[j]} → {orig_tokens[p]}"
    return out


@torch.no_grad()
def _contrast_logits(
    adapter: ModelAdapter, tokenizer, batch: EncodedBatch, spec: ContrastSpec, ids, mask, aligned
) -> torch.Tensor:
    """One forward of the contrast inputs -> (B, T, V) next-token logits before each aligned position."""
    source_ids, source_mask = batch.source_ids, batch.source_mask
    if spec.sources is not None:
        encoded = tokenizer(spec.sources, add_special_tokens=not spec.skip_special_tokens)["input_ids"]
        source_ids, source_mask = (t.to(ids.device) for t in pad_right(encoded, tokenizer.pad_token_id or 0))
    states = adapter.states(ForwardInputs(ids, mask, source_ids, source_mask, None, None))  # (B, L, H)
    rows = states.gather(1, (aligned - 1)[..., None].expand(-1, -1, states.shape[-1]))  # (B, T, H)
    return adapter.head(rows.flatten(0, 1)).view(*aligned.shape, -1)
