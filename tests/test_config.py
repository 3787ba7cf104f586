"""PipelineConfig is the one source of the CLI flags, their help and the resume fingerprint."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from inseq_ray.pipeline.cli import NOT_FLAGS, add_dataset_args, config_from_args
from inseq_ray.pipeline.config import PipelineConfig

FIELDS = dataclasses.fields(PipelineConfig)


def _parse(*argv: str) -> PipelineConfig:
    p = argparse.ArgumentParser()
    add_dataset_args(p)
    return config_from_args(p.parse_args(list(argv)))


def test_every_field_has_help_and_a_flag():
    p = argparse.ArgumentParser()
    add_dataset_args(p)
    flags = {a.dest for a in p._actions}
    for f in FIELDS:
        assert f.metadata.get("help"), f.name
        assert f.name in flags or f.name in NOT_FLAGS, f.name


def test_flags_set_fields_of_every_type():
    cfg = _parse(
        "--batch-size", "7", "--num-gpus-per-actor", "0.5", "--step-scores", "entropy", "probability",
        "--method-args", '{"n_steps": 3}', "--no-normalize", "--attribute-target", "--local",
    )  # fmt: skip
    assert (cfg.batch_size, cfg.num_gpus_per_actor, cfg.step_scores) == (7, 0.5, ["entropy", "probability"])
    assert cfg.method_args == {"n_steps": 3} and cfg.normalize is False and cfg.attribute_target is True
    assert cfg.use_ray is False
    assert _parse() == PipelineConfig()  # no flag changes nothing


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_the_fingerprint_covers_exactly_the_fields_that_change_results(f):
    from inseq_ray.pipeline.config import CONTEXT_SETTINGS, PROMPT_SETTINGS

    # the context and prompt settings count in their mode only (off, they leave fingerprints alone)
    base = PipelineConfig(context_column="context") if f.name in CONTEXT_SETTINGS[1:] else PipelineConfig()
    base = PipelineConfig(chat_template=True) if f.name in PROMPT_SETTINGS[::3] else base  # (template, system)
    value = getattr(base, f.name)
    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 1.0, list: lambda v: [*v, "x"]}
    changed = other.get(type(value), lambda v: {"k": 1} if isinstance(v, dict) else f"{v}-other")(value)
    moved = dataclasses.replace(base, **{f.name: changed})
    assert (moved.fingerprint() != base.fingerprint()) == bool(f.metadata["results"]), f.name


def test_both_subcommands_share_flag_names_and_accept_inseqs():
    from inseq_ray.cli import build_parser
    from inseq_ray.pipeline.cli import CONCEPT_FLAGS

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for concept, names in CONCEPT_FLAGS.items():
        for sub in ("attribute", "attribute-dataset"):
            if concept == "include_eos_baseline" and sub == "attribute-dataset":
                continue  # a per-call option of the one-off command only
            known = {s for a in subs[sub]._actions for s in a.option_strings}
            assert set(names) <= known, (sub, concept, set(names) - known)
    inseq_style = parser.parse_args(
        ["attribute", "--model_name_or_path", "toy:bart", "--attribution_method", "integrated_gradients",
         "--input_texts", "the cat", "--attribution_kwargs", '{"n_steps": 3}', "--step_scores", "probability",
         "-bs", "2", "--attribute_target", "--save_path", "x.json"]
    )  # fmt: skip
    assert (inseq_style.model, inseq_style.method, inseq_style.method_args) == (
        "toy:bart",
        "integrated_gradients",
        {"n_steps": 3},
    )
    assert inseq_style.batch_size == 2 and inseq_style.attribute_target and inseq_style.save == "x.json"
    ds = _parse("-m", "toy:copier", "-a", "attention", "--attribution_kwargs", '{"layers": 0}', "--batch_size", "4")
    assert (ds.model, ds.method, ds.method_args, ds.batch_size) == ("toy:copier", "attention", {"layers": 0}, 4)
