"""The run report: its figures equal independent computations over the tables, every page and link exists,
it works from s3:// (moto), and headless Chromium renders it at 1400 px and on a narrow window with no
request leaving the page (screenshots kept under the test's tmp folder)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from inseq_ray.cli import main
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.report import build_report, data
from inseq_ray.toy.tasks import copy_corpus, translation_corpus
from tests.test_pipeline import read_table


def _translator_run(tmp_path: Path, output: str | None = None) -> str:
    corpus = tmp_path / "c.jsonl"
    lines = [json.dumps({"source": s}) for s, _, _ in translation_corpus(24, 5)] + [json.dumps({"source": ""})]
    corpus.write_text("\n".join(lines) + "\n")
    out = output or str(tmp_path / "run")
    run(PipelineConfig(input=str(corpus), output=out, use_ray=False, step_scores=["probability", "entropy"]),
        progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory) -> str:
    return _translator_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(translator_run, tmp_path_factory) -> Path:
    return build_report(translator_run, tmp_path_factory.mktemp("out") / "report", sample=5)


def test_figures_equal_independent_computations(translator_run):
    run_ = data.open_run(translator_run)
    src = read_table(translator_run, "source_attributions").to_pandas()
    # entropy and input share of one step, by hand
    seq_id, step = src.iloc[0]["seq_id"], src.iloc[0]["step"]
    a = src[(src.seq_id == seq_id) & (src.step == step)]["score"].abs().to_numpy()
    p = a[a > 0] / a[a > 0].sum()
    prof = data.step_profiles(run_).filter((pl.col("seq_id") == seq_id) & (pl.col("step") == step)).collect()
    assert math.isclose(prof["entropy"][0], float(-(p * pl.Series(p).log().to_numpy()).sum()), rel_tol=1e-5)
    assert math.isclose(prof["input_share"][0], 1.0, rel_tol=1e-6)  # no target attributions in this run
    hist = data.profile_histograms(run_)
    assert hist["entropy"]["count"].sum() == src.groupby(["seq_id", "step"]).ngroups
    # the most frequent (target <- top source) pair, by pandas
    top = src.loc[src.groupby(["seq_id", "step"])["score"].idxmax()]
    counts = top.groupby(["target_token", "attributed_token"]).size().sort_values(ascending=False)
    pairs = data.top_pairs(run_)
    assert pairs["times"][0] == counts.iloc[0]
    assert (pairs["target_token"][0], pairs["attributed_token"][0]) in set(counts[counts == counts.iloc[0]].index)
    # step-score curve: the mean probability at step 0
    steps = read_table(translator_run, "step_scores")
    curve = data.step_score_curves(run_)["probability"]
    assert math.isclose(curve["mean"][0], steps.filter(pl.col("step") == 0)["probability"].mean(), rel_tol=1e-6)
    # least sure: the lowest mean probability first
    least = data.least_sure(run_)
    lowest = steps.group_by("seq_id").agg(pl.col("probability").mean()).sort("probability")["seq_id"][0]
    assert least["seq_id"][0] == lowest
    assert data.errors_by_reason(run_).row(0)[:2] == ("empty", 1)


def test_pages_links_and_no_external_references(report, translator_run):
    index = report.read_text()
    manifest = json.loads(Path(translator_run, "manifest.json").read_text())
    assert f">{manifest['records']}<" in index and "empty" in index
    pages = sorted(report.parent.glob("seq/*.html"))
    assert len(pages) >= 5  # the sample, plus the least sure records
    for href in re.findall(r"href='([^']+)'", index):
        assert (report.parent / href).exists(), href
    for path in [report, *pages]:
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path  # nothing fetched from outside
        assert "<script" not in text
    assert "rows: attributed tokens" in pages[0].read_text()  # the heatmap


def test_report_of_a_decoder_only_run_shows_the_prompt_share(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"source": p}) for p, _, _ in copy_corpus(10, 3)) + "\n")
    out = tmp_path / "run"
    run(PipelineConfig(input=str(corpus), output=str(out), model="toy:copier", use_ray=False,
                       generation_args={"max_new_tokens": 6}), progress=False)  # fmt: skip
    run_ = data.open_run(str(out))
    shares = data.step_profiles(run_).collect()["input_share"]
    assert 0 < shares.mean() < 1  # prompt and generated prefix both get attribution
    index = build_report(str(out), tmp_path / "rep", sample=2)
    assert "share of attribution on the prompt" in index.read_text()


def test_cli_report_and_its_errors(translator_run, tmp_path, capsys):
    assert main(["report", translator_run, "-o", str(tmp_path / "r"), "--sample", "1"]) == 0
    assert "report: " in capsys.readouterr().out and (tmp_path / "r" / "index.html").exists()
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r2")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert main(["report", translator_run, "-o", str(tmp_path / "r3"), "--ids", "0000"]) == 2
    assert "--ids: 0000 not in this run" in capsys.readouterr().err


def test_report_from_s3(tmp_path, s3):
    prefix = f"s3://{s3['bucket']}/runs/report"
    _translator_run(tmp_path, prefix)
    index = build_report(prefix, tmp_path / "rep", sample=3)
    assert prefix in index.read_text() and len(list(index.parent.glob("seq/*.html"))) >= 3


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    _chromium() is None, reason="no Chromium on this machine (scripts/setup installs the Debian package)"
)
@pytest.mark.parametrize("width", [1400, 420])
def test_chromium_renders_it_without_requests_or_overflow(report, width, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            for path in (report, sorted(report.parent.glob("seq/*.html"))[0]):
                page = browser.new_page(viewport={"width": width, "height": 900})
                requests = []
                page.on("request", lambda r, seen=requests: seen.append(r.url))
                page.goto(path.as_uri())
                page.screenshot(path=str(tmp_path / f"{path.stem}_{width}.png"), full_page=True)
                assert [u for u in requests if not u.startswith("file://")] == []
                assert page.evaluate("document.documentElement.scrollWidth") <= width  # wide tables scroll inside
                assert page.evaluate("document.querySelectorAll('svg').length") >= (3 if path == report else 0)
        finally:
            browser.close()


def test_throughput_over_time_and_work_per_node_come_from_the_markers(translator_run, report):
    run_ = data.open_run(translator_run)
    manifest = json.loads(Path(translator_run, "manifest.json").read_text())
    flow = data.throughput_over_time(run_)
    assert flow.height == manifest["shards"] and flow["shard_records"].sum() == manifest["records"]
    assert (flow["minutes"] >= 0).all() and flow["minutes"].is_sorted()
    last = flow.group_by("node").agg(pl.col("records").max(), pl.col("shard_records").sum())
    assert last["records"].to_list() == last["shard_records"].to_list()  # a running count per node
    work = data.work_per_node(run_)
    assert work["records"].sum() == manifest["records"] and work["shards"].sum() == manifest["shards"]
    assert "Work per node" in report.read_text()


def test_all_zero_steps_are_left_out_of_the_pairs_and_counted(tmp_path):
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run
    from tests.test_pipeline import read_table

    path = tmp_path / "c.txt"
    path.write_text("the cat sees a dog\na bird\n")
    run(PipelineConfig(input=str(path), output=str(tmp_path / "run"), use_ray=False), progress=False)
    table = next((tmp_path / "run" / "tables" / "source_attributions").glob("*.parquet"))
    src = pl.read_parquet(table)
    first = src.select("seq_id", "step").row(0)
    zeroed = src.with_columns(  # one step's attribution all zero (as a contrastive copier gives)
        pl.when((pl.col("seq_id") == first[0]) & (pl.col("step") == first[1]))
        .then(0.0)
        .otherwise(pl.col("score"))
        .cast(pl.Float32)
        .alias("score")
    )
    zeroed.write_parquet(table)
    pairs, zeros = data.top_pairs_and_zero_steps(data.open_run(str(tmp_path / "run")))
    steps = read_table(str(tmp_path / "run"), "step_scores").height
    assert zeros == 1 and pairs["times"].sum() == steps - 1
    index = build_report(str(tmp_path / "run"), tmp_path / "rep", sample=1).read_text()
    assert "1 steps whose attribution is all zero are left out" in index
    assert "share of attribution on the" not in index  # no target attributions: the share would always be 1
    assert "heatmap pages: " in index and "How spread each step" in index
