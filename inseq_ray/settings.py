"""Attribution settings, resolved once: the one room where ids are looked up, keyword arguments routed, the
contrast rule checked and every engine default chosen.

The Python API (:meth:`AttributionModel.attribute`), both CLI subcommands and the pipeline (its start-up
checks, the dry-run price and the attribute block) all resolve through these functions, so a default or a
rule is written here once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from inseq_ray.contrast import CONTRAST_ARGS, ContrastSpec
from inseq_ray.methods import MethodSpec, get_method_spec
from inseq_ray.step_scores import (
    STEP_FUNCTIONS,
    get_step_function,
    is_contrastive,
    kl_divergence_fn,
    step_function_name,
)

DEFAULT_METHOD = "saliency"
CPU_STEP_BLOCKS = 4  # measured: GPT-2-small saliency 2.50 -> 3.23 sent/s, IG 0.13 -> 0.19 sent/s on 2 cores
GPU_BATCH_TOKENS = 1 << 20  # padded tokens x method copies per forward: ~1M fits a 7B-class model on 80 GB
CPU_BATCH_TOKENS = 1 << 15  # on CPU, bigger forwards only add memory traffic (measured: step_blocks notes)
VJP_MODES = ("loop", "batched")


@dataclass(frozen=True, kw_only=True)
class AttributeSettings:
    """What every batch of one ``attribute()`` call does, resolved and validated once."""

    method_id: str
    method: MethodSpec
    method_kw: dict  # as given (reported in ``info``)
    method_call_kw: dict  # with the method's defaults filled in (what the method is called with)
    fn: Callable  # the attributed step function
    fn_kw: dict
    score_fns: dict[str, Callable]  # step scores by name
    scores_kw: dict
    attribute_target: bool  # always True for decoder-only models
    include_eos_baseline: bool
    vjp: str
    aggregate_hidden_fn: str | None
    normalize: bool  # with aggregate_hidden_fn: per-step normalisation on the device too
    step_blocks: int
    contrast: ContrastSpec | None = None  # contrastive inputs of every input, when given

    def rows_per_batch(self, max_batch_tokens: int | None) -> int | None:
        """The token budget of one batch's rows (``max_batch_tokens`` over the method's copies per forward)."""
        return None if max_batch_tokens is None else max(1, max_batch_tokens // self.method.copies_for(self.method_kw))


class ModelFacts(NamedTuple):
    """What settings depend on of the loaded model."""

    is_encoder_decoder: bool
    on_gpu: bool
    default_method: str | None = None


def resolve_settings(facts: ModelFacts, n_inputs: int, options: Mapping[str, Any], extra: dict) -> AttributeSettings:
    """``attribute()``'s options (its keyword arguments by name) and ``extra`` keyword arguments -> settings.
    Errors name the valid choices."""
    method_id = options["method"] or facts.default_method or DEFAULT_METHOD
    spec = get_method_spec(method_id)
    fn = get_step_function(options["attributed_fn"])
    score_fns = {name: get_step_function(name) for name in options["step_scores"]}
    extra, fn_args, scores_args, contrast_kw = pop_contrast(
        extra, options["attributed_fn_args"], options["step_scores_args"]
    )
    method_kw, fn_kw, scores_from_extra = route_kwargs(method_id, spec.fn, fn, score_fns, extra)
    method_kw = {**method_kw, **(options["attribution_args"] or {})}
    contrast = ContrastSpec.from_kwargs(contrast_kw, n_inputs, facts.is_encoder_decoder)
    given = bool(set(contrast_kw) - {"skip_special_tokens"})  # a call-wide option, the contrast inputs' too
    check_contrast_use(contrast_users(fn, score_fns), given, contrast is not None, API_SPELLING)
    check_kl_force(fn, contrast)
    _check_engine_options(options)
    return AttributeSettings(
        method_id=method_id,
        method=spec,
        method_kw=method_kw,
        method_call_kw=spec.resolve(method_kw),
        fn=fn,
        fn_kw={**fn_kw, **(fn_args or {})},
        score_fns=score_fns,
        scores_kw=scores_kwargs(score_fns, {**scores_from_extra, **(scores_args or {})}),
        attribute_target=options["attribute_target"] or not facts.is_encoder_decoder,
        include_eos_baseline=options["include_eos_baseline"],
        vjp=options["vjp"],
        aggregate_hidden_fn=options["aggregate_hidden_fn"],
        normalize=options["normalize"],
        step_blocks=default_step_blocks(options["step_blocks"], facts.on_gpu),
        contrast=contrast,
    )


def _check_engine_options(options: Mapping[str, Any]) -> None:
    if options["vjp"] not in VJP_MODES:
        raise ValueError(f"vjp must be 'loop' or 'batched', got {options['vjp']!r}.")
    step_blocks = options["step_blocks"]
    if step_blocks is not None and (not isinstance(step_blocks, int) or step_blocks < 1):
        raise ValueError(f"step_blocks must be a positive int, got {step_blocks!r}.")
    if options["normalize"] and options["aggregate_hidden_fn"] is None:
        raise ValueError(
            "normalize=True normalises the on-device reduction; pass aggregate_hidden_fn too (e.g. 'vnorm'), "
            "or leave normalize off and call out.aggregate(), which normalises by default."
        )


def default_step_blocks(step_blocks: int | None, on_gpu: bool) -> int:
    """GPUs: one forward per batch; CPUs: shorter backward passes pay more."""
    return step_blocks if step_blocks is not None else (1 if on_gpu else CPU_STEP_BLOCKS)


def default_batch_tokens(max_batch_tokens: int | None, on_gpu: bool) -> int:
    """The pipeline's token budget per forward: given, or the device's default."""
    return max_batch_tokens or (GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS)


def actor_resources(num_actors: int | None, gpus_per_actor: float | None, cluster_gpus: float, shards: int):
    """(actors, GPUs per actor) of a Ray run: one actor per GPU when the cluster has GPUs, else two; never more
    actors than shards."""
    num_gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if cluster_gpus else 0.0)
    actors = num_actors or (max(1, int(cluster_gpus // max(num_gpus, 1e-9))) if num_gpus else 2)
    return max(1, min(actors, shards)), num_gpus


def route_kwargs(method_id: str, method_fn, fn, score_fns: dict, kwargs: dict) -> tuple[dict, dict, dict]:
    """Route extra keyword arguments to the method, the attributed function or the step scores, by signature
    (as Inseq does); an argument none of them takes is an error naming what each accepts."""
    method_params = _params(method_fn)
    fn_params = _params(fn)
    score_params = set().union(*(_params(f) for f in score_fns.values()))
    method_kw = {k: v for k, v in kwargs.items() if k in method_params}
    fn_kw = {k: v for k, v in kwargs.items() if k in fn_params and k not in method_params}
    scores_kw = {k: v for k, v in kwargs.items() if k in score_params}
    unknown = sorted(set(kwargs) - set(method_kw) - set(fn_kw) - set(scores_kw))
    if unknown:
        raise TypeError(
            f"Unknown argument(s) {', '.join(unknown)} for method {method_id!r} "
            f"(it accepts: {', '.join(sorted(method_params)) or 'nothing'}; "
            f"the attributed function accepts: {', '.join(sorted(fn_params)) or 'nothing'}; "
            f"the step scores accept: {', '.join(sorted(score_params)) or 'nothing'})."
        )
    return method_kw, fn_kw, scores_kw


def check_method_args(method_id: str, attributed_fn: str, step_scores: Sequence[str], method_args: dict) -> None:
    """The pipeline's ``--method-args`` routed as ``attribute()`` routes them (a typo is one line)."""
    spec = get_method_spec(method_id)
    fn = get_step_function(attributed_fn)
    scores = {n: get_step_function(n) for n in step_scores}
    rest, *_ = pop_contrast(dict(method_args), None, None)  # contrast_force_inputs etc. describe the inputs
    route_kwargs(method_id, spec.fn, fn, scores, rest)
    spec.resolve({k: v for k, v in rest.items() if k in spec.params()})


def scores_kwargs(score_fns: dict, given: dict) -> dict[str, dict]:
    """Inseq's flat ``step_scores_args`` -> each score's own keyword arguments (by signature); a key that names
    a score with a dict value gives that score's arguments directly."""
    out: dict[str, dict] = {name: {} for name in score_fns}
    for key, value in given.items():
        if key in score_fns and isinstance(value, dict):
            out[key].update(value)
            continue
        takers = [name for name, f in score_fns.items() if key in _params(f)]
        if not takers:
            raise TypeError(f"step_scores_args: no step score in {sorted(score_fns)} takes {key!r}.")
        for name in takers:
            out[name][key] = value
    return out


def pop_contrast(extra: dict, fn_args: dict | None, scores_args: dict | None) -> tuple[dict, dict, dict, dict]:
    """Take Inseq's contrast arguments out of ``extra`` and of ``attributed_fn_args``/``step_scores_args``
    (they describe the inputs, not one function) -> (extra, fn args, scores args, contrast args); the
    caller's dicts are left as they are."""
    contrast = {}
    rest = []
    for d in (extra, fn_args or {}, scores_args or {}):
        contrast.update({k: v for k, v in d.items() if k in CONTRAST_ARGS})
        rest.append({k: v for k, v in d.items() if k not in CONTRAST_ARGS})
    return rest[0], rest[1], rest[2], contrast


class ContrastSpelling(NamedTuple):
    """How one interface names the contrast inputs, for the messages of :func:`check_contrast_use`."""

    inputs: str  # how to pass them
    given: str  # what was given
    users: str  # where a contrastive function is chosen


API_SPELLING = ContrastSpelling(
    "pass contrast_targets (or, for encoder-decoder models, contrast_sources)",
    "contrast_targets or contrast_sources",
    "attributed_fn nor step_scores uses them: pick one of {names}",
)
CLI_SPELLING = ContrastSpelling(
    "pass --contrast-column (the contrastive target) and/or, for encoder-decoder models, --contrast-source-column",
    "--contrast-column/--contrast-source-column",
    "--attributed-fn nor --step-scores uses them: add one of {names} (e.g. --step-scores contrast_prob_diff)",
)


def contrast_users(fn, score_fns: Mapping[str, Callable]) -> list[str]:
    """The names of the contrastive step functions among the attributed function and the step scores."""
    users = [name for name, f in score_fns.items() if is_contrastive(f)]
    return users + ([step_function_name(fn)] if is_contrastive(fn) else [])


def check_contrast_use(users: list[str], given: bool, complete: bool, spell: ContrastSpelling) -> None:
    """Contrast inputs and contrastive functions come together; either alone is a mistake worth one line.
    ``given``: some contrast argument was passed; ``complete``: contrastive inputs (sources or targets) were."""
    if users and not complete:
        raise ValueError(f"{', '.join(users)} compare with contrastive inputs: {spell.inputs}.")
    if given and not complete:
        raise ValueError(f"contrast arguments given without {spell.given}.")
    if complete and not users:
        names = ", ".join(sorted(n for n, f in STEP_FUNCTIONS.items() if is_contrastive(f)))
        raise ValueError("contrast inputs were given, but neither " + spell.users.format(names=names) + ".")


def check_kl_force(fn, contrast: ContrastSpec | None) -> None:
    if fn is kl_divergence_fn and contrast is not None and not contrast.force_inputs:
        raise ValueError(
            "attributed_fn='kl_divergence' compares the original and the contrast forward: pass "
            "contrast_force_inputs=True (as in Inseq)."
        )


def _params(fn) -> set[str]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop ctx / args
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
