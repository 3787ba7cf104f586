"""A run that attributed nothing is not a success: mistakes end in one line with a non-zero exit, early."""

from __future__ import annotations

import json

import pytest

from inseq_ray.cli import main
from inseq_ray.pipeline.verdict import EARLY_RECORDS, early_stop, final_verdict
from inseq_ray.toy.tasks import translation_corpus

SENTENCES = [s for s, _, _ in translation_corpus(300, seed=61)]


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["attribute-dataset", "--local", "--quiet", "--no-report", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_early_stop_and_final_verdict_by_hand():
    one_reason = [{"records": EARLY_RECORDS, "ok": 0, "errors_by_reason": {"internal_error": EARLY_RECORDS},
                   "error_examples": {"internal_error": "TypeError: boom"}}]  # fmt: skip
    assert "internal_error" in early_stop(one_reason, 0.5) and "boom" in early_stop(one_reason, 0.5)
    assert early_stop(one_reason, 1.0) is None  # --max-error-rate 1 turns the breaker off
    assert early_stop([{**one_reason[0], "records": EARLY_RECORDS - 1}], 0.5) is None  # too few to judge
    assert early_stop([{**one_reason[0], "ok": 1}], 0.5) is None
    mixed = [{"records": 40, "ok": 0, "errors_by_reason": {"empty": 20, "bad_json": 20}}]
    assert early_stop(mixed, 0.5) is None
    assert "nothing was attributed" in final_verdict({"records": 3, "ok": 0, "errors": 3}, 1.0)
    assert "60%" in final_verdict({"records": 10, "ok": 4, "errors": 6, "errors_by_reason": {"empty": 6}}, 0.5)
    assert final_verdict({"records": 10, "ok": 6, "errors": 4}, 0.5) is None


def test_a_wrong_column_behind_a_malformed_row_is_refused_before_the_run(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("text\n" + "".join(f"{s}\n" for s in SENTENCES[:20]) + "a,b,c\n")
    code, _, err = _cli(capsys, "--input", path, "--output", tmp_path / "run")  # default --source-column source
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--source-column" in err
    assert not (tmp_path / "run" / "_run.json").exists()


def test_a_method_argument_typo_is_one_line_before_anything_starts(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text(SENTENCES[0] + "\n")
    code, _, err = _cli(capsys, "--input", path, "--output", tmp_path / "run", "-a", "integrated_gradients",
                        "--method-args", '{"n_step": 20}')  # fmt: skip
    assert code == 2 and "n_step" in err and "n_steps" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "--input", path, "--output", tmp_path / "run", "--dry-run", "-a",
                        "integrated_gradients", "--method-args", '{"n_step": 20}')  # fmt: skip
    assert code == 2 and "n_step" in err  # the dry run runs the same checks


def test_a_run_whose_first_records_all_fail_for_one_reason_stops_early(tmp_path, capsys, monkeypatch):
    from inseq_ray.attribution_model import AttributionModel

    def broken(self, *a, **k):
        raise RuntimeError("the model cannot run here")

    monkeypatch.setattr(AttributionModel, "_attribute_batch", broken)
    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES))
    code, _, err = _cli(capsys, "--input", path, "--output", tmp_path / "run", "--shard-bytes", 1024)
    assert code == 1 and "stopped early" in err and "internal_error" in err and "cannot run here" in err
    planned = len(json.loads((tmp_path / "run" / "_run.json").read_text())["shards"])
    committed = len(list((tmp_path / "run" / "_shards").glob("*.json")))
    assert planned > 5 and committed < planned  # it did not grind through the corpus


def test_zero_ok_records_or_too_many_errors_exit_non_zero_with_the_breakdown(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES[:3]) + "{}\n")
    # every record lacks the source column, but too few to stop early: the run ends, and says it failed
    code, out, err = _cli(capsys, "--input", path, "--output", tmp_path / "a", "--source-column", "text",
                          "--target-column", "missing", "--max-error-rate", "0.1")  # fmt: skip
    assert code == 1 and "1 of 4 records are error rows" in err and "missing_column 1" in err and "done:" in out
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["errors_by_reason"] == {"missing_column": 1}  # the results are kept
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    code, _, err = _cli(capsys, "--input", empty, "--output", tmp_path / "b", "--max-error-rate", "1")
    assert code == 1 and "nothing was attributed" in err and "empty 2" in err


def test_overwrite_starts_over_and_says_what_it_removed(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:5]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("not the run's")
    assert _cli(capsys, "--input", path, "--output", tmp_path / "run")[0] == 0
    code, _, err = _cli(capsys, "--input", path, "--output", tmp_path / "run", "-a", "input_x_gradient")
    assert code == 2 and "another configuration" in err  # refused without --overwrite
    code, _, err = _cli(capsys, "--input", path, "--output", tmp_path / "run", "-a", "input_x_gradient", "--overwrite")
    assert code == 0 and "--overwrite: removed a run of toy:translator / saliency (1 committed shards" in err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["method"] == "input_x_gradient"
    assert (tmp_path / "run" / "mine.txt").read_text() == "not the run's"  # only what a run owns is removed


@pytest.mark.parametrize(("method", "copies"), [("saliency", 1), ("integrated_gradients", 20)])
def test_dry_run_prices_the_method_chosen(tmp_path, capsys, method, copies):
    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:10]))
    args = ["--dry-run", "-a", method, "--method-args", json.dumps({"n_steps": 20} if copies > 1 else {})]
    code, out, _ = _cli(capsys, "--input", path, "--output", tmp_path / "run", *args)
    assert code == 0 and f"/ {copies} copies per forward" in out and f"for {method}" in out


def test_help_version_and_argument_errors_import_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from inseq_ray.cli import main\n"
        "for argv in (['--version'], ['--help'], ['attribute-dataset', '--help'], ['status', '--help'],"
        " ['attribute-dataset', '--batch-size', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "IMPORTED []" in done.stdout and "inseq-ray 0.1.0" in done.stdout
    assert "invalid int value: 'x'" in done.stderr


def test_the_users_id_column_is_carried_into_sequences_and_errors(tmp_path, capsys):
    import polars as pl

    jsonl = tmp_path / "c.jsonl"
    rows = [{"doc": f"d{i}", "source": s} for i, s in enumerate(SENTENCES[:4])] + [{"doc": 99, "source": ""}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _cli(capsys, "--input", jsonl, "--output", tmp_path / "a", "--id-column", "doc")[0] == 0
    seqs = pl.read_parquet(tmp_path / "a" / "tables" / "sequences" / "*.parquet")
    errs = pl.read_parquet(tmp_path / "a" / "tables" / "errors" / "*.parquet")
    assert dict(zip(seqs["record_id"], seqs["source_text"], strict=True)) == {f"d{i}": SENTENCES[i] for i in range(4)}
    assert errs["record_id"].to_list() == ["99"] and errs["reason"].to_list() == ["empty"]
    csv = tmp_path / "c.csv"
    csv.write_text("id,source\n" + "x1,the cat sees a dog\n" + "bad,row,here\n" + "x3,a bird\n")
    assert _cli(capsys, "--input", csv, "--output", tmp_path / "b", "--id-column", "id")[0] == 0
    seqs = pl.read_parquet(tmp_path / "b" / "tables" / "sequences" / "*.parquet").sort("position")
    assert seqs.select("record_id", "position").rows() == [("x1", 0), ("x3", 2)]  # the malformed row is row 1
    code, _, err = _cli(capsys, "--input", csv, "--output", tmp_path / "c", "--id-column", "nope")
    assert code == 2 and "--id-column" in err


def test_kept_columns_are_carried_as_one_json_object(tmp_path, capsys):
    import polars as pl

    csv = tmp_path / "c.csv"
    csv.write_text("id,source,lang,score\n" + "x1,the cat sees a dog,en,3\n" + "x2,,en,4\n")
    code, _, _ = _cli(capsys, "--input", csv, "--output", tmp_path / "a", "--id-column", "id",
                      "--keep-columns", "lang", "score", "--max-error-rate", "1")  # fmt: skip
    assert code == 0
    seqs = pl.read_parquet(tmp_path / "a" / "tables" / "sequences" / "*.parquet")
    errs = pl.read_parquet(tmp_path / "a" / "tables" / "errors" / "*.parquet")
    assert json.loads(seqs["record_columns"][0]) == {"lang": "en", "score": 3}  # typed as the CSV reader infers
    assert json.loads(errs["record_columns"][0]) == {"lang": "en", "score": 4} and errs["record_id"][0] == "x2"
    assert seqs.select(pl.col("record_columns").str.json_path_match("$.lang")).item() == "en"  # as docs/tables.md
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"source": "a bird", "meta": {"n": 1}}) + "\n")
    assert _cli(capsys, "--input", jsonl, "--output", tmp_path / "b", "--keep-columns", "meta", "nope")[0] == 0
    seqs = pl.read_parquet(tmp_path / "b" / "tables" / "sequences" / "*.parquet")
    assert json.loads(seqs["record_columns"][0]) == {"meta": {"n": 1}, "nope": None}
