"""Renderings carry the tokens and values; the terminal table fits 80 columns; the CLI writes its files."""

from __future__ import annotations

import io
import re
import struct

import pytest
from rich.console import Console

import inseq_ray as inseq
from inseq_ray.cli import main
from inseq_ray.viz import clean, rich_tables

LONG_SRC = "every old farmer reads a big green book near the river and the young teacher writes slowly"
LONG_TGT = "the child likes bread today here with the cat near a house and the dog eats an apple under a tree"


@pytest.fixture(scope="module")
def long_out(bart):
    return bart.attribute(
        [LONG_SRC], [LONG_TGT], attribute_target=True, step_scores=["probability"], show_progress=False
    )


def test_terminal_table_fits_80_columns(long_out):
    seq = long_out.aggregate()[0]
    assert seq.n_steps >= 20 and len(seq.source) + len(seq.target) >= 30
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system=None)
    for t in rich_tables(seq, 80):
        console.print(t)
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for tok in seq.source + seq.generated:  # every token appears (possibly truncated in a header)
        assert clean(tok.token)[:3] in text
    assert "probab" in text


def test_html_is_self_contained_and_has_values(long_out):
    html = long_out.show(return_html=True)
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http" not in html
    seq = long_out.aggregate()[0]
    assert html.count("<table>") == 1
    assert html.count("class='col'") == seq.n_steps
    groups = 2  # "source" and "target prefix" label rows
    assert html.count("<tr") == 1 + groups + len(seq.source) + len(seq.target) + len(seq.step_scores)
    first = float(seq.source_attributions[0, 0])
    assert f"title='{first:.4g}'" in html
    assert "␣farmer" in html


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_png_size_grows_with_tokens(long_out, bart, tmp_path):
    seq = long_out[0]
    (big,) = long_out.plot(str(tmp_path / "big.png"), dpi=100)
    w, h = _png_size(big)
    assert w == round(100 * max(4.0, 1.8 + 0.22 * seq.n_steps))
    assert h == round(100 * max(3.0, 1.6 + 0.2 * (len(seq.source) + len(seq.target))))
    (small,) = bart.attribute(["a cat"], ["one"], show_progress=False).plot(str(tmp_path / "s.png"), dpi=100)
    assert _png_size(small)[1] < h


def test_cli_attribute_writes_files(model_dir, tmp_path, capsys):
    save, html, png = tmp_path / "o.json.gz", tmp_path / "o.html", tmp_path / "o.png"
    code = main(
        [
            "attribute",
            "-m",
            model_dir["bart"],
            "-a",
            "integrated_gradients",
            "-i",
            "the cat sees",
            "-g",
            "one fish",
            "--attribution-args",
            '{"n_steps": 4}',
            "--step-scores",
            "probability",
            "--save",
            str(save),
            "--html",
            str(html),
            "--png",
            str(png),
            "--attribute-target",
        ]
    )
    assert code == 0
    out = inseq.FeatureAttributionOutput.load(str(save))
    assert out.info["attribution_method"] == "integrated_gradients" and out.info["attribution_args"] == {"n_steps": 4}
    assert html.read_text().startswith("<!DOCTYPE html>") and png.exists()
    assert re.search(r"probab", capsys.readouterr().out)


def test_cli_errors_are_one_clear_line(model_dir, capsys):
    code = main(["attribute", "-m", model_dir["bart"], "-a", "nope", "-i", "the cat"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown attribution method 'nope'") and "saliency" in err
    with pytest.raises(SystemExit):
        main(["attribute", "-m", model_dir["bart"], "-i", "x", "--attribution-args", "{bad"])


def test_cli_help_explains_usage(capsys):
    with pytest.raises(SystemExit):
        main(["attribute", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--step-scores" in text and "toy:" in text


def test_terminal_table_truncates_nothing_and_uses_one_number_format(bart):
    out = bart.attribute(
        ["every old farmer reads a big green book"],
        ["the child likes bread today"],
        step_scores=["probability", "entropy"],
        show_progress=False,
    )
    seq = out.aggregate()[0]
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system=None)
    for part in rich_tables(seq, 80, title="t"):
        console.print(part)
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    joined = text.replace("\n", "")
    for tok in seq.source + seq.generated:  # every label whole: in the table or in the legend
        assert clean(tok.token) in joined, tok.token
    numbers = re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[-+]\d+)?(?![\w.])", text)
    assert numbers and len({("e" in n, len(n.split(".")[1].split("e")[0])) for n in numbers}) == 1, numbers


def test_html_has_legend_labels_sticky_rows_divider_and_text_captions(bart, gpt2):
    html = bart.attribute(["a big cat"], ["one fish"], attribute_target=True, show_progress=False).show(
        return_html=True
    )
    assert "class='legend'" in html and "linear-gradient" in html
    assert ">source<" in html and ">target prefix<" in html and "position: sticky" in html
    assert "␣big" in html and "→" in html and "Sequence 0" not in html
    dec = gpt2.attribute(["the cat sees"], ["the cat sees a dog"], show_progress=False)
    dec_html = dec.show(return_html=True)
    seq = dec.aggregate()[0]
    rows = re.findall(r"<tr( class='[^']*')?><th class='row'>", dec_html)
    assert dec_html.count("class='divider'") == 1 and ">prompt + generated<" in dec_html
    assert len(rows) > seq.attr_pos_start


def test_plot_writes_one_file_per_sequence_and_returns_them(bart, tmp_path):
    out = bart.attribute(["a cat", "the big dog"], ["one", "the child"], show_progress=False)
    paths = out.plot(str(tmp_path / "h.png"), dpi=60)
    assert paths == [str(tmp_path / "h_0.png"), str(tmp_path / "h_1.png")]
    assert all(_png_size(p)[0] > 0 for p in paths)
    assert out.plot(str(tmp_path / "one.png"), index=1, dpi=60) == [str(tmp_path / "one.png")]
