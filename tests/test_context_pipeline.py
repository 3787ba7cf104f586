"""Context mode of the pipeline (--context-column): the tables equal the in-process API record by record, list
contexts get their documents, bad records are error rows, reruns resume, and on Ray too."""

from __future__ import annotations

import json

import polars as pl
import pytest

from inseq_ray.context import ContextArgs, attribute_context
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.pipeline.storage import Storage

RECORDS = [
    {"source": "the dog eats", "context": "the cat sees a bird", "target": "the fish likes bread"},
    {"source": "one fish", "context": ["a dog runs home", "the old tree"], "target": "likes the old tree"},
    {"source": "the cat", "context": ""},  # no context: an error row
    {"source": "a red book", "context": "every old farmer sees the small red cat", "target": "the cat sees a book"},
    {"source": "a small child", "context": ["one bird", "the river", "a green tree"]},  # generated output
]
TABLES = ("sequences", "context_tokens", "context_cues", "errors")


def _corpus(tmp_path) -> str:
    path = tmp_path / "ctx.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return str(path)


def _cfg(tmp_path, model_dir, **kw) -> PipelineConfig:
    base = {"input": _corpus(tmp_path), "output": str(tmp_path / "run"), "model": model_dir["gpt2"],
            "context_column": "context", "use_ray": False, "generation_args": {"max_new_tokens": 4}}  # fmt: skip
    return PipelineConfig(**{**base, **kw})


def _tables(prefix) -> dict[str, pl.DataFrame]:
    return {t: pl.read_parquet(f"{prefix}/tables/{t}/*.parquet") for t in TABLES}


def test_the_tables_equal_the_api_record_by_record(tmp_path, model_dir, gpt2):
    cfg = _cfg(tmp_path, model_dir)
    manifest = run(cfg, progress=False)
    got = _tables(cfg.output)
    assert manifest["records"] == len(RECORDS) and manifest["ok"] == 4 and manifest["errors"] == 1
    assert got["errors"]["reason"].to_list() == ["missing_column"]
    for name in TABLES:
        assert manifest["table_rows"][name] == got[name].height
    seqs = got["sequences"].sort("position")
    for row in seqs.iter_rows(named=True):
        record = next(r for r in RECORDS if r["source"] == row["source_text"])
        context = record["context"] if isinstance(record["context"], str) else "\n".join(record["context"])
        ref = attribute_context(gpt2, ContextArgs(
            input_current_text=record["source"], input_context_text=context, output_current_text=record.get("target"),
            generation_kwargs={"max_new_tokens": 4}))  # fmt: skip
        assert row["target_text"] == ref.output_current and row["context_text"] == context
        assert row["generated"] == ("target" not in record)
        tokens = got["context_tokens"].filter(pl.col("seq_id") == row["seq_id"]).sort("step")
        assert tokens["token"].to_list() == ref.output_current_tokens == row["output_tokens"]
        assert tokens["cti_score"].to_list() == pytest.approx(ref.cti_scores, rel=1e-4, abs=1e-6)
        picked = {c.cti_idx for c in ref.cci_scores}
        assert set(tokens.filter(pl.col("selected"))["step"].to_list()) == picked
        assert row["n_context_sensitive"] == len(picked) and row["n_tokens"] == len(ref.output_current_tokens)
        cues = got["context_cues"].filter(pl.col("seq_id") == row["seq_id"]).sort("step", "context_pos")
        for c in ref.cci_scores:
            mine = cues.filter(pl.col("step") == c.cti_idx)
            assert mine["context_token"].to_list() == ref.input_context_tokens
            assert mine["score"].to_list() == pytest.approx(c.input_context_scores, rel=1e-3, abs=1e-7)
        shares = [s for s in (c.context_share for c in ref.cci_scores) if s is not None]
        assert row["context_share"] == pytest.approx(sum(shares) / len(shares), rel=1e-3)
        assert 0 < row["context_share"] <= 1


def test_list_contexts_give_each_context_token_its_document(tmp_path, model_dir, gpt2):
    from inseq_ray.context.procedure import tokens_of

    cfg = _cfg(tmp_path, model_dir, context_sensitivity_std_threshold=None)  # every token: every cue row
    run(cfg, progress=False)
    got = _tables(cfg.output)
    seqs = got["sequences"]
    for record in (r for r in RECORDS if isinstance(r["context"], list)):
        seq_id = seqs.filter(pl.col("source_text") == record["source"])["seq_id"].item()
        assert seqs.filter(pl.col("seq_id") == seq_id)["n_documents"].item() == len(record["context"])
        cues = got["context_cues"].filter(pl.col("seq_id") == seq_id, pl.col("step") == 0).sort("context_pos")
        sep = [None] * len(tokens_of(gpt2, "\n", ()))  # the separator's tokens belong to no document
        expected = [d for k, doc in enumerate(record["context"]) for d in (sep if k else []) + [k] * len(
            tokens_of(gpt2, doc, ()))]  # fmt: skip
        assert cues["document"].to_list() == expected  # documents tokenise alone as they do joined by a newline
    one = got["context_cues"].join(seqs.filter(pl.col("n_documents") == 1).select("seq_id"), on="seq_id")
    assert set(one["document"].to_list()) == {0}


def test_a_rerun_is_complete_and_the_objects_are_inseqs_structure(tmp_path, model_dir):
    import gzip

    from inseq.commands.attribute_context.attribute_context_helpers import AttributeContextOutput

    cfg = _cfg(tmp_path, model_dir)
    first = run(cfg, progress=False)
    assert run(cfg, progress=False)["already_complete"]
    Storage(cfg.output).delete("manifest.json")
    marker = sorted(Storage(cfg.output).list_names("_shards"))[0]
    Storage(cfg.output).delete("_shards", marker)
    again = run(cfg, progress=False)  # the shard is redone, the same rows come out
    assert again["records"] == first["records"] and again["table_rows"] == first["table_rows"]
    uri = pl.read_parquet(f"{cfg.output}/tables/sequences/*.parquet")["object_uri"][0]
    with gzip.open(uri) as f:
        saved = json.load(f)
    assert AttributeContextOutput.from_dict({k: v for k, v in saved.items() if k != "seq_id"}).cti_scores


def test_context_settings_leave_other_runs_fingerprints_alone_and_clashes_are_one_line(tmp_path, model_dir):
    plain = PipelineConfig()
    assert "context_column" not in plain.results_settings()
    assert plain.fingerprint() == PipelineConfig(context_sensitivity_topk=3).fingerprint()  # off: not counted
    assert (
        _cfg(tmp_path, model_dir).fingerprint() != _cfg(tmp_path, model_dir, context_sensitivity_topk=3).fingerprint()
    )
    with pytest.raises(ValueError, match="--context-column cannot be combined with --contrast-column"):
        _cfg(tmp_path, model_dir, contrast_column="c").validate()
    with pytest.raises(ValueError, match="cannot be combined with --step-scores, --max-batch-tokens .context mode"):
        _cfg(tmp_path, model_dir, step_scores=["entropy"], max_batch_tokens=100).validate()
    text = tmp_path / "plain.txt"
    text.write_text("a line\n")
    with pytest.raises(ValueError, match="plain-text files have no column for --context-column"):
        run(_cfg(tmp_path, model_dir, input=str(text)), progress=False)


def test_on_ray_the_tables_equal_the_local_run(tmp_path, model_dir, ray_local):
    local = _cfg(tmp_path, model_dir, output=str(tmp_path / "local"))
    remote = _cfg(tmp_path, model_dir, output=str(tmp_path / "ray"), use_ray=True, num_actors=1)
    run(local, progress=False)
    run(remote, progress=False)
    a, b = _tables(local.output), _tables(remote.output)
    for name in ("context_tokens", "context_cues"):
        key = ["seq_id", "step"] + (["side", "context_pos"] if name == "context_cues" else [])
        left, right = a[name].sort(key), b[name].sort(key)
        assert left.drop("cti_score", "score", strict=False).equals(right.drop("cti_score", "score", strict=False))
        for col in ("cti_score", "score"):
            if col in left.columns:
                assert left[col].to_list() == pytest.approx(right[col].to_list(), rel=1e-4, abs=1e-7)


def test_the_report_of_a_context_run(tmp_path, model_dir):
    from inseq_ray.report import build_report

    cfg = _cfg(tmp_path, model_dir)
    run(cfg, progress=False)
    index = build_report(cfg.output, tmp_path / "report", sample=3)
    text = index.read_text()
    assert "Context sensitivity" in text and "<svg" in text and "<script" not in text
    pages = sorted((tmp_path / "report" / "seq").glob("*.html"))
    assert len(pages) == 3 and all("class='sel'" in p.read_text() or "output:" in p.read_text() for p in pages)
    selected = pl.read_parquet(f"{cfg.output}/tables/context_tokens/*.parquet").filter(pl.col("selected"))
    assert f"{selected.height:,} (" in text  # the card counts the selected tokens
