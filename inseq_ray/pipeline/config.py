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


@dataclass
class PipelineConfig:
    """Every field has a default and a one-line reason."""

    input: str = EXAMPLE_CORPUS  # file, folder or glob, any fsspec URL (txt, jsonl, csv, parquet)
    output: str = "out/run"  # run prefix, any fsspec URL; rerunning with the same prefix resumes
    model: str = "toy:translator"  # HF id, local folder or toy:<name>; the default needs no network
    method: str = "saliency"  # attribution method id
    input_format: str | None = None  # text|jsonl|csv|parquet; None: from the file extension
    source_column: str = "source"  # jsonl/csv/parquet column holding the input text
    target_column: str | None = "target"  # optional column with forced targets; generated when absent
    attribute_target: bool = False  # encoder-decoder: also attribute the target prefix
    attributed_fn: str = "probability"  # step function whose gradient is attributed
    step_scores: list[str] = field(default_factory=lambda: ["probability"])  # per-token scores to store
    method_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"n_steps": 20} for IG
    generation_args: dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 40})  # when no targets
    aggregate_fn: str = "vnorm"  # reduces the hidden dimension on the device before anything is copied
    normalize: bool = True  # each step's source + target scores sum to 1 (Inseq's default)
    save_granular: bool = False  # keep [tokens, steps, hidden] tensors in the objects (large!)
    scores_precision: str = "float32"  # precision of tensors in the per-sequence objects
    batch_size: int = 32  # sentences per forward pass (records are sorted by length within a shard)
    shard_bytes: int = 256 << 10  # input bytes per shard: the unit of resume and of commit
    num_actors: int | None = None  # attribution actors; None: one per GPU, else 2 on CPU
    num_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    num_cpus_per_actor: float = 1.0  # CPU slots per actor (keep below the cluster's count)
    device: str | None = None  # None: cuda when the actor has a GPU
    dtype: str | None = None  # bf16/fp16 on GPUs; None keeps the checkpoint's dtype
    use_ray: bool = True  # False: run the same blocks in a plain local loop
    expected_records_per_gpu_s: float = 1500.0  # dry-run GPU-hour estimate (engine bench, ~20-token targets)

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
        """Hash of everything that changes results: a resumed run must match it."""
        keys = (
            "input",
            "model",
            "method",
            "input_format",
            "source_column",
            "target_column",
            "attribute_target",
            "attributed_fn",
            "step_scores",
            "method_args",
            "generation_args",
            "aggregate_fn",
            "normalize",
            "save_granular",
            "scores_precision",
            "shard_bytes",
            "dtype",
        )
        payload = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def validate(self) -> None:
        if not self.input or not self.output:
            raise ValueError("Both input and output are required (a file/folder/glob URL and a run prefix URL).")
        from inseq_ray.methods import get_method
        from inseq_ray.step_scores import get_step_function

        get_method(self.method)
        for name in [self.attributed_fn, *self.step_scores]:
            get_step_function(name)
        if self.batch_size < 1 or self.shard_bytes < 1024:
            raise ValueError("batch_size must be >= 1 and shard_bytes >= 1024.")
