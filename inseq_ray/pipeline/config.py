"""The run configuration: one documented dataclass, loadable from YAML and overridable by flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXAMPLE_CORPUS = str(Path(__file__).resolve().parents[1] / "data" / "example_corpus.jsonl")


def setting(
    default: Any = None,
    help: str = "",
    *,
    results: bool = False,
    factory=None,
    show_default: str | None = None,
    choices: tuple[str, ...] | None = None,
):
    """A config field with its help text and whether it changes results (then it is in the fingerprint).

    ``show_default``: how ``--help`` shows the default (when the value itself would not read well);
    ``choices``: the values the flag accepts.
    """
    meta = {"help": help, "results": results, "show_default": show_default, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


CONTEXT_SETTINGS = (
    "context_column",
    "input_template",
    "document_separator",
    "context_sensitivity_metric",
    "context_sensitivity_std_threshold",
    "context_sensitivity_topk",
)

PROMPT_SETTINGS = ("prompt_template", "chat_template", "messages_column", "system_prompt")


@dataclass
class PipelineConfig:
    """Every field has a default, a one-line help (also the CLI's) and whether it changes results."""

    input: str = setting(
        EXAMPLE_CORPUS,
        "file, folder or glob, any fsspec URL (txt, jsonl, csv, parquet)",
        results=True,
        show_default="the bundled example corpus",
    )
    output: str = setting("out/run", "run prefix, any fsspec URL; rerunning with the same prefix resumes")
    model: str = setting(
        "toy:translator", "HF id, local folder or toy:<name>; the default needs no network", results=True
    )
    method: str = setting("saliency", "attribution method id", results=True)
    input_format: str | None = setting(None, "text|jsonl|csv|parquet; default: from the file extension", results=True)
    source_column: str = setting("source", "jsonl/csv/parquet column holding the input text", results=True)
    target_column: str | None = setting(
        "target", "optional column with forced targets; generated when absent", results=True
    )
    contrast_column: str | None = setting(
        None,
        "jsonl/csv/parquet column with each record's contrastive target (for contrast_* step functions; "
        "decoder-only: the whole contrastive text)",
        results=True,
    )
    contrast_source_column: str | None = setting(
        None, "encoder-decoder: column with each record's contrastive source", results=True
    )
    id_column: str | None = setting(
        None,
        "jsonl/csv/parquet column with your own record id, carried into the sequences and errors tables as "
        "record_id (join the results back to your corpus on it)",
        results=True,
    )
    keep_columns: list[str] = setting(
        help="more input columns carried into the sequences and errors tables, as one JSON object in "
        "record_columns (polars: pl.col('record_columns').str.json_path_match('$.lang'))",
        results=True,
        factory=list,
    )
    context_column: str | None = setting(
        None,
        "context-reliance mode (PECoRe): jsonl/csv/parquet column with each record's input context (a string, or "
        "a list of documents); the source column is the current input. Writes context_tokens and context_cues",
        results=True,
    )
    input_template: str = setting("{context} {current}", "context mode: how context and input are joined", results=True)
    document_separator: str = setting(
        "\n", "context mode: what joins a list of documents", results=True, show_default="a newline"
    )
    context_sensitivity_metric: str = setting(
        "kl_divergence", "context mode: contrastive step function scoring context sensitivity", results=True
    )
    context_sensitivity_std_threshold: float | None = setting(
        1.0, "context mode: tokens above mean + this x std of their scores are context-sensitive", results=True
    )
    context_sensitivity_topk: int | None = setting(
        None, "context mode: at most this many context-sensitive tokens per record", results=True
    )
    prompt_template: str | None = setting(
        None,
        'build each prompt from columns, e.g. "Question: {question}\n\nContext: {context}"; each field\'s share of '
        "the attribution per generated token goes to the field_shares table",
        results=True,
    )
    chat_template: bool = setting(
        False,
        "apply the tokenizer's chat template: to --messages-column, or to the prompt (source column or template) as "
        "the user's message after --system-prompt",
        results=True,
    )
    messages_column: str | None = setting(
        None, "column of chat messages (lists of {role, content}); implies --chat-template", results=True
    )
    system_prompt: str | None = setting(
        None, "with --chat-template: the system message before each prompt", results=True
    )
    attribute_target: bool = setting(False, "encoder-decoder: also attribute the target prefix", results=True)
    attributed_fn: str = setting("probability", "step function whose gradient is attributed", results=True)
    step_scores: list[str] = setting(
        help="per-token step scores to store", results=True, factory=lambda: ["probability"]
    )
    method_args: dict[str, Any] = setting(
        help="JSON method arguments, e.g. '{\"n_steps\": 20}' for IG", results=True, factory=dict
    )
    generation_args: dict[str, Any] = setting(
        help="JSON generate() arguments, used when a record has no target",
        results=True,
        factory=lambda: {"max_new_tokens": 40},
    )
    aggregate_fn: str = setting(
        "vnorm", "reduces the hidden dimension on the device before anything is copied", results=True
    )
    normalize: bool = setting(True, "each step's source + target scores sum to 1 (Inseq's default)", results=True)
    save_granular: bool = setting(False, "keep [tokens, steps, hidden] tensors in the objects (large!)", results=True)
    scores_precision: str = setting(
        "float32", "float32|float16|bfloat16|float8 for tensors in the objects", results=True
    )
    batch_size: int = setting(32, "at most this many sentences per forward pass (records sorted by length in a shard)")
    max_batch_tokens: int | None = setting(
        None,
        "at most this many padded tokens x method copies per forward (long records go alone, short ones pack); "
        "default: on a GPU, what the memory model says fits in its memory (--dry-run prints it); 2^15 on CPUs",
    )
    shard_bytes: int = setting(256 << 10, "input bytes per shard: the unit of resume and of commit", results=True)
    num_actors: int | None = setting(None, "attribution actors; default: one per GPU, else 2 on CPU")
    num_gpus_per_actor: float | None = setting(None, "default: 1 when the cluster has GPUs, else 0")
    num_cpus_per_actor: float = setting(1.0, "CPU slots per actor (keep below the cluster's count)")
    device: str | None = setting(None, "cpu, cuda; default: cuda when the actor has a GPU")
    device_map: str | None = setting(
        None,
        "spread the model over the actor's GPUs (accelerate); default: auto when an actor reserves more than one GPU",
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
    )
    dtype: str | None = setting(
        None, "bf16/fp16 on GPUs; default: the checkpoint's dtype", results=True, choices=("fp32", "bf16", "fp16")
    )
    use_ray: bool = setting(True, "False: run the same blocks in a plain local loop (CLI: --local)")
    storage_attempts: int = setting(
        8, "tries per object-store request (exponential backoff, <= 20 s apart) before the shard fails; rerun resumes"
    )
    verbose: bool = setting(False, "show Ray's own log lines and the actors' output (hidden by default)")
    max_error_rate: float = setting(
        0.5,
        "a finished run with a larger share of error rows exits non-zero with the breakdown (0 ok records always "
        "does); below 1, a run whose first records all fail for one reason stops early",
    )
    expected_records_per_gpu_s: float = setting(1500.0, "dry-run GPU-hour estimate (engine bench, ~20-token targets)")

    @classmethod
    def from_yaml(cls, path: str) -> PipelineConfig:
        import fsspec

        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f) or {}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}.")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of every field marked ``results=True``: a resumed run must match it."""
        payload = json.dumps(self.results_settings(), sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def results_settings(self) -> dict[str, Any]:
        """The fields that change results (those the fingerprint covers), by name; the input URL redacted, so
        that a presigned input re-issued with a fresh signature is the same run."""
        from inseq_ray.redact import redact_url

        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("results")}
        if self.context_column is None:  # context settings count in context mode only (older runs keep their id)
            out = {k: v for k, v in out.items() if k not in CONTEXT_SETTINGS}
        if not self.prompt_mode:  # likewise prompt settings
            out = {k: v for k, v in out.items() if k not in PROMPT_SETTINGS}
        return {**out, "input": redact_url(self.input)}

    def _check_method_args(self) -> None:
        """``method_args`` against the signatures of the method, the attributed function and the step scores
        (as ``attribute()`` routes them), before anything starts: a typo is one line listing the valid names."""
        from inseq_ray.settings import check_method_args

        try:
            check_method_args(self.method, self.attributed_fn, self.step_scores, dict(self.method_args))
        except TypeError as e:
            raise ValueError(f"--method-args: {e}") from None

    def validate(self) -> None:
        if not self.input or not self.output:
            raise ValueError("Both input and output are required (a file/folder/glob URL and a run prefix URL).")
        self._check_method_args()  # looks up the method and step function ids too
        if self.batch_size < 1 or self.shard_bytes < 1024:
            raise ValueError("batch_size must be >= 1 and shard_bytes >= 1024.")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {self.max_error_rate}.")
        if self.device is not None and self.device_map is not None:
            raise ValueError(
                f"--device {self.device} and --device-map {self.device_map}: give one (a map places the model)."
            )
        if self.context_column is not None:
            self._check_context_mode()
        if self.prompt_mode or self.system_prompt:
            self._check_prompt_mode()

    @property
    def prompt_mode(self) -> bool:
        """Prompts are built from fields (a template, a chat template or messages) and field shares are tabled."""
        return bool(self.prompt_template or self.chat_template or self.messages_column)

    def _check_prompt_mode(self) -> None:
        """What prompt mode cannot honour, refused in one line."""
        if self.context_column is not None:
            raise ValueError("--context-column builds its own prompts: drop --prompt-template/--chat-template there.")
        if self.input_format == "text":
            raise ValueError(
                "--prompt-template/--chat-template need jsonl, csv or parquet input (text has no columns)."
            )
        if self.messages_column and self.prompt_template:
            raise ValueError("--messages-column is the whole chat: drop --prompt-template (or put it in the messages).")
        if self.system_prompt and (self.messages_column or not self.chat_template):
            raise ValueError(
                "--system-prompt is a chat message: add --chat-template (with --messages-column, put it in the messages)."
            )
        if self.prompt_template:
            from inseq_ray.prompts import template_fields

            if not template_fields(self.prompt_template):
                raise ValueError(f"--prompt-template {self.prompt_template!r} names no {{column}}.")

    def _check_context_mode(self) -> None:
        """Context mode reads a column and writes its own tables: what it cannot honour is refused in one line."""
        clashes = [flag for flag, on in (("--contrast-column", self.contrast_column),
                   ("--contrast-source-column", self.contrast_source_column), ("--save-granular", self.save_granular))
                   if on]  # fmt: skip
        unused = [flag for flag, on in (("--step-scores", self.step_scores != ["probability"]),
                  ("--aggregate-fn", self.aggregate_fn != "vnorm"), ("--no-normalize", not self.normalize),
                  ("--max-batch-tokens", self.max_batch_tokens is not None)) if on]  # fmt: skip
        if clashes or unused:
            raise ValueError(
                f"--context-column cannot be combined with {', '.join(clashes + unused)}"
                + (
                    " (context mode scores tokens by the CTI metric and cues by the method's default aggregation)."
                    if unused
                    else "."
                )
            )
        if "{context}" not in self.input_template or "{current}" not in self.input_template:
            raise ValueError(f"--input-template {self.input_template!r} needs both {{context}} and {{current}}.")
        if self.input_format == "text":
            raise ValueError("--context-column needs jsonl, csv or parquet input (plain text has no columns).")
