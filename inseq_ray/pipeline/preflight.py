"""Everything the driver can check before any cluster starts; each failure is one line with the fix.

Input (exists, readable, has the source column), model (loadable here: a toy id, a local folder, or a
Hub id in the local cache when offline), output (writable, credentials found). Ray is never started
for a run that cannot work.
"""

from __future__ import annotations

import os
import uuid

from inseq_ray.errors import Reason, StorageError
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.shards import InputFiles, Record, Shard, input_identity, list_inputs, plan_shards
from inseq_ray.pipeline.storage import Storage
from inseq_ray.redact import redact_text, redact_url

UNPARSED = (Reason.BAD_INPUT, Reason.BAD_JSON, Reason.INVALID_UTF8, Reason.EMPTY)
CREDENTIAL_HINT = (
    "no credentials were found for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE for a "
    "profile in ~/.aws), or run where an instance profile / workload identity provides them"
)


def preflight(cfg: PipelineConfig) -> tuple[list[Shard], list[Record], dict[str, dict]]:
    """Check input, model and output; return the shard plan, the first records read (a sample) and the
    input's identity (per file: size and version). Raises ValueError (one line) on the first problem.
    """
    files = _list(cfg)
    _check_output_outside_input(cfg, files)
    shards = plan_shards(cfg.input, cfg.input_format, cfg.shard_bytes, files=files)
    if cfg.context_column:  # context mode: contrastive functions compare with the model's contextless output
        _check_context(cfg, shards)
    else:
        _check_contrast(cfg, shards)
    sample = _check_columns(cfg, shards[0])
    check_model(cfg.model)
    _check_output(cfg.output)
    return shards, sample, input_identity(files)


def _check_output_outside_input(cfg: PipelineConfig, files: InputFiles) -> None:
    """A folder or glob input must not contain the output: the run's own files would become its input."""
    import fsspec

    if len(files.infos) == 1 and next(iter(files.infos)).rstrip("/") == _path_of(cfg.input, files.fs):
        return  # one file: its listing cannot grow
    out_fs, out = fsspec.core.url_to_fs(cfg.output)
    if type(out_fs) is not type(files.fs):
        return
    base, out = _abs(files.base, files.fs), _abs(out, out_fs)
    if out == base or out.startswith(base.rstrip("/") + "/"):
        raise ValueError(
            f"output: {redact_url(cfg.output)} is inside the input {redact_url(cfg.input)}: the run's own files "
            "would be read as input on every rerun. Choose an --output outside the input folder."
        )


def _path_of(url: str, fs) -> str:
    import fsspec

    return _abs(fsspec.core.url_to_fs(url)[1], fs).rstrip("/")


def _abs(path: str, fs) -> str:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return os.path.abspath(path) if {"file", "local"} & set(protocols) else path


def estimate_records(shards: list[Shard], sample: list[Record]) -> int | None:
    """Records in ``shards`` from the sample's bytes per record (text/JSONL only; None otherwise)."""
    lines = [r for r in sample if r.shard == sample[0].shard] if sample else []
    if len(lines) < 2 or any(s.fmt not in ("text", "jsonl") or s.end < 0 for s in shards):
        return None
    per_record = max(1.0, (lines[-1].position - lines[0].position) / (len(lines) - 1))
    return max(1, round(sum(s.size for s in shards) / per_record))


def _list(cfg: PipelineConfig) -> InputFiles:
    try:
        return list_inputs(cfg.input)
    except FileNotFoundError as e:
        raise ValueError(f"input: {e} Check --input (a file, folder or glob).") from None
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(_remote_error("read the input", cfg.input, e)) from None


def _check_columns(cfg: PipelineConfig, shard: Shard, sample: int = 50) -> list[Record]:
    """The first records of the first file: if none has the source column, the column name is wrong."""
    from inseq_ray.pipeline.blocks import read_records

    records = []
    for record in read_records(cfg, shard):
        records.append(record)
        if len(records) >= sample:
            break
    parsed = [r for r in records if r.error_reason not in UNPARSED]  # malformed rows say nothing about columns
    if parsed and all(r.error_reason == Reason.MISSING_COLUMN for r in parsed):
        message = parsed[0].error_message
        flag = next((f for word, f in (("contrast", "--contrast-column"), ("context", "--context-column"))
                     if word in message), "--source-column")  # fmt: skip
        raise ValueError(f"input: {message} in {shard.rel}; pass {flag} with the right name.")
    if cfg.id_column and parsed and all(r.record_id is None for r in parsed):
        raise ValueError(
            f"input: no record of {shard.rel} has a value in column {cfg.id_column!r}; pass --id-column with the "
            "right name."
        )
    return records


def _check_contrast(cfg: PipelineConfig, shards: list[Shard]) -> None:
    """Contrastive step functions and contrast columns come together (the rule ``attribute()`` applies), from a
    format with columns."""
    from inseq_ray.settings import CLI_SPELLING, check_contrast_use, contrast_users
    from inseq_ray.step_scores import get_step_function

    scores = {n: get_step_function(n) for n in cfg.step_scores}
    users = contrast_users(get_step_function(cfg.attributed_fn), scores)
    columns = [c for c in (cfg.contrast_column, cfg.contrast_source_column) if c]
    check_contrast_use(users, bool(columns), bool(columns), CLI_SPELLING)
    if cfg.attributed_fn == "kl_divergence" and columns and not cfg.method_args.get("contrast_force_inputs"):
        raise ValueError(
            "--attributed-fn kl_divergence compares the original and the contrast forward: add "
            "--method-args '{\"contrast_force_inputs\": true}' (as in Inseq)."
        )
    if columns and any(s.fmt == "text" for s in shards):
        raise ValueError("input: plain-text files have no columns for contrastive inputs; use jsonl, csv or parquet.")


def _check_context(cfg: PipelineConfig, shards: list[Shard]) -> None:
    from inseq_ray.step_scores import get_step_function, is_contrastive

    if any(s.fmt == "text" for s in shards):
        raise ValueError("input: plain-text files have no column for --context-column; use jsonl, csv or parquet.")
    if not is_contrastive(get_step_function(cfg.context_sensitivity_metric)):
        raise ValueError(
            f"--context-sensitivity-metric {cfg.context_sensitivity_metric!r} is not a contrastive step function "
            "(kl_divergence, pcxmi, contrast_prob_diff, ...)."
        )


def check_model(model: str) -> None:
    """The model can be loaded here: a toy id, a local folder with a config, or a Hub id (cached when offline)."""
    from inseq_ray.models.loading import resolve_model_ref

    model = str(resolve_model_ref(model))
    if os.path.isdir(model):
        if not os.path.exists(os.path.join(model, "config.json")):
            raise ValueError(f"model: {model} is a folder without config.json; point --model at a saved model.")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        where = "the local Hugging Face cache (HF_HUB_OFFLINE=1 is set)" if offline else "the Hugging Face Hub"
        first = str(e).strip().splitlines()[0][:200]
        raise ValueError(
            f"model: {model!r} cannot be loaded from {where} ({first}); check the id, or download it first "
            "(huggingface-cli download) or pass a local folder."
        ) from None


def _check_output(url: str) -> None:
    storage = Storage(url)
    probe = f"preflight-{uuid.uuid4().hex[:8]}"
    try:
        storage.write_bytes(b"", "_tmp", probe)
        storage.delete("_tmp", probe)
    except StorageError:
        raise
    except Exception as e:
        raise ValueError(_remote_error("write the output", url, e)) from None


def _remote_error(verb: str, url: str, e: Exception) -> str:
    safe = redact_url(url)
    if "credential" in str(e).lower() or type(e).__name__ == "NoCredentialsError":
        return f"cannot {verb}: " + CREDENTIAL_HINT.format(url=safe) + "."
    first = (redact_text(str(e)).strip().splitlines() or [""])[0][:200]
    return f"cannot {verb} at {safe}: {type(e).__name__}: {first}"
