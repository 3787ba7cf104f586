"""A few figures of a finished run printed at its end (``attribute-dataset`` without ``--no-report``), computed
as the HTML report computes them."""

from __future__ import annotations

from inseq_ray.report import SEQ_ID, data


def print_report(prefix: str) -> None:
    """A few figures of the finished run, computed as the HTML report computes them (lazy scans, grouped shard
    by shard on the streaming engine): memory is bounded by one shard, not by the run."""
    import polars as pl

    pl.Config.set_tbl_rows(8)
    pl.Config.set_fmt_str_lengths(40)
    run = data.open_run(prefix)
    if data.is_context_run(run):
        print_context(run)
        return
    top, zeros = data.top_pairs_and_zero_steps(run, k=8)
    if top.height:
        print("\nMost frequent (generated token -> its top-attributed input token):")
        print(top)
    if zeros:
        print(f"({zeros} steps whose attribution is all zero are left out: no token is on top)")
    if run.has_rows("step_scores") and "probability" in run.step_score_names:
        mean = run.scan("step_scores").select(pl.col("probability").mean()).collect(engine="streaming").item()
        print(f"\nmean probability of generated tokens: {mean:.3f}")
    errors = data.errors_by_reason(run)
    if errors.height:
        print("\nerrors by reason:")
        print(errors)
    first = run.scan("sequences").select("seq_id").head(1).collect(engine="streaming")
    if first.height:
        from inseq_ray.errors import AttributionFileError
        from inseq_ray.output import FeatureAttributionOutput

        seq_id = first.item()
        if isinstance(seq_id, str) and SEQ_ID.match(seq_id):
            uri = f"{run.prefix}/sequences/{seq_id[:2]}/{seq_id}.json.gz"
            try:
                out = FeatureAttributionOutput.load(uri)
            except AttributionFileError as e:
                print(f"\nsequence {seq_id}: {e}")
                return
            print(f"\nsequence {seq_id}, from {uri}:")
            out.show()


def print_context(run: data.Run) -> None:
    """Context mode: how many generated tokens were context-sensitive, and which, with their top cue."""
    counts = data.context_counts(run)
    share = counts["selected"] / counts["tokens"] if counts["tokens"] else 0.0
    print(
        f"\ncontext-sensitive tokens: {counts['selected']} of {counts['tokens']} generated ({share:.1%}); "
        f"mean CTI score {counts['mean_cti']:.3f}"
    )
    top = data.context_sensitive_tokens(run, k=8)
    if top.height:
        print("Most frequent context-sensitive tokens and their top context cue:")
        print(top)
    errors = data.errors_by_reason(run)
    if errors.height:
        print("\nerrors by reason:")
        print(errors)
