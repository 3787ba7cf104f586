"""Charts of the run report: matplotlib figures as inline SVG (glyphs as paths: no fonts, no requests)."""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

COLOR = "#3b6ea5"
plt.rcParams.update({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    # scale with the page: drop the fixed size, keep the viewBox
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 style="width:100%;height:auto"', svg, count=1)
    return svg


def score_curve(df: pl.DataFrame, name: str) -> str:
    """Mean of a step score per generation step, with its 10th-90th percentile band."""
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    x = df["step"].to_list()
    ax.fill_between(x, df["p10"].to_list(), df["p90"].to_list(), color=COLOR, alpha=0.2, lw=0, label="p10-p90")
    ax.plot(x, df["mean"].to_list(), color=COLOR, lw=1.6, marker="o", ms=2.5, label="mean")
    ax.set_xlabel("generation step")
    ax.set_ylabel(name)
    if name in ("probability", "mc_dropout_prob_avg", "contrast_prob") or name.endswith("_prob"):
        ax.set_ylim(0, 1.02)  # a probability axis spans 0..1: noise in 0.9986..0.9998 must not read as a trend
    ax.set_title(f"{name} per generation step")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def histogram(df: pl.DataFrame, title: str, xlabel: str) -> str:
    """Bars of a (left, right, count) histogram."""
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    left, right = df["left"].to_list(), df["right"].to_list()
    ax.bar(left, df["count"].to_list(), width=[r - lo for lo, r in zip(left, right)], align="edge", color=COLOR,
           edgecolor="white", lw=0.5)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("generation steps")
    ax.set_title(title)
    return _svg(fig)


def throughput(df: pl.DataFrame) -> str:
    """Records committed over time (minutes since the first shard started), one line per node."""
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    for node in df["node"].unique(maintain_order=True).to_list():
        part = df.filter(pl.col("node") == node)
        ax.step(part["minutes"].to_list(), part["records"].to_list(), where="post", lw=1.4, label=node[:12])
    total = df.sort("minutes").with_columns(pl.col("shard_records").cum_sum().alias("all"))
    ax.step(total["minutes"].to_list(), total["all"].to_list(), where="post", color="black", lw=1.8, label="all")
    ax.set_xlabel("minutes since the first shard started")
    ax.set_ylabel("records committed")
    ax.set_title("throughput over time, per node")
    ax.legend(frameon=False, fontsize=7)
    return _svg(fig)
