"""Prompts from fields and chat templates, the token span of each field, and the field_shares table (issue #25,
item 4): spans checked against the tokenizer on the text pieces, chat ids against the template's own, shares
against hand-computed sums, and the pipeline's table against the API record by record."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

import inseq_ray
from inseq_ray.errors import InputError
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.prompts import (
    Prompt,
    chat_prompt,
    field_shares,
    fill_template,
    sequence_field_shares,
    token_spans,
)
from inseq_ray.toy import build_tiny_model

TEMPLATE = "Question: {question}\n\nContext: {context}"
CHAT = (  # a Llama-3-like template: BOS in the text, role headers, the generation prompt
    "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)
QA = [
    {"question": "who sees the house", "context": "happy sees the house today"},
    {"question": "what does the tree hold", "context": ""},  # no context: an error row
    {"question": "where is the river", "context": "the river is near the garden"},
]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny Llama (its tokenizer adds BOS) whose tokenizer carries a chat template."""
    path = build_tiny_model("llama", tmp_path_factory.mktemp("chat"), init_std=0.2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    return str(path)


def test_a_template_records_where_each_field_lies():
    p = fill_template(TEMPLATE, QA[0])
    assert p.text == "Question: who sees the house\n\nContext: happy sees the house today"
    assert {k: p.text[a:b] for k, (a, b) in p.fields.items()} == {
        "question": QA[0]["question"],
        "context": QA[0]["context"],
    }
    assert fill_template("{{literal}} {x}", {"x": "y"}).text == "{literal} y"
    with pytest.raises(InputError, match="field 'context' is missing"):
        fill_template(TEMPLATE, QA[1])
    with pytest.raises(InputError, match="plain"):
        fill_template("{x!r}", {"x": "y"})


def test_token_spans_cover_the_fields_tokens(gpt2):
    tok = gpt2.tokenizer
    p = fill_template(TEMPLATE, QA[0])
    spans = token_spans(tok, p)
    for name, (a, b) in p.fields.items():  # independent: token counts of the text before and through the field
        before = len(tok(p.text[:a].rstrip(" "))["input_ids"])
        through = len(tok(p.text[:b])["input_ids"])
        assert spans[name] == (before, through), name


def test_a_chat_prompt_encodes_to_the_templates_own_ids(chat_model):
    tok = AutoTokenizer.from_pretrained(chat_model)
    p = chat_prompt(tok, prompt=fill_template(TEMPLATE, QA[0]), system="be brief")
    theirs = tok.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": fill_template(TEMPLATE, QA[0]).text}],
        tokenize=True, add_generation_prompt=True,
    )["input_ids"]  # fmt: skip
    assert tok(p.text)["input_ids"] == list(theirs)  # one BOS, not two
    assert {k: p.text[a:b] for k, (a, b) in p.fields.items()} == {"system": "be brief", **QA[0]}
    ids = tok(p.text)["input_ids"]
    for name, (a, b) in token_spans(tok, p).items():
        assert tok.decode(ids[a:b]).strip() == p.text[slice(*p.fields[name])], name
    messages = chat_prompt(tok, [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "the cat"},
                                 {"role": "user", "content": "and the dog"}])  # fmt: skip
    assert list(messages.fields) == ["user[0]", "assistant[1]", "user[2]"]
    with pytest.raises(InputError, match="messages\\[0\\]"):
        chat_prompt(tok, [{"role": "user"}])
    plain = AutoTokenizer.from_pretrained(chat_model)
    plain.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        chat_prompt(plain, prompt="x")


def test_field_shares_are_the_fields_parts_of_each_step():
    scores = torch.tensor([[0.1, 0.2], [0.3, -0.2], [0.2, 0.1], [0.4, 0.3], [float("nan"), 0.2]])  # (L=5, T=2)
    shares = field_shares(scores, {"a": (0, 2), "b": (2, 3)}, prompt_length=4)
    total = torch.tensor([1.0, 1.0])
    assert torch.allclose(shares["a"], torch.tensor([0.4, 0.4]) / total)
    assert torch.allclose(shares["b"], torch.tensor([0.2, 0.1]))
    assert torch.allclose(shares["other"], torch.tensor([0.4, 0.3]))  # position 3: in no field
    assert torch.allclose(shares["generated"], torch.tensor([0.0, 0.2]))
    assert torch.allclose(sum(shares.values()), torch.ones(2))


def test_a_chat_prompt_generates_and_attributes_without_a_doubled_bos(chat_model):
    am = inseq_ray.load_model(chat_model, "saliency", device="cpu")
    p = chat_prompt(am.tokenizer, prompt=fill_template(TEMPLATE, QA[0]), system="be brief")
    out = am.attribute(p.text, generation_args={"max_new_tokens": 3, "min_new_tokens": 3}, show_progress=False)
    seq = out.sequence_attributions[0]
    prompt_ids = am.tokenizer(p.text)["input_ids"]
    assert [t.id for t in seq.target[: len(prompt_ids)]] == prompt_ids and seq.attr_pos_start == len(prompt_ids)
    assert seq.target[0].id == am.tokenizer.bos_token_id != seq.target[1].id
    shares = sequence_field_shares(seq, token_spans(am.tokenizer, p))
    assert set(shares) == {"system", "question", "context", "generated", "other"}
    assert torch.allclose(sum(shares.values()), torch.ones(3), atol=1e-5)
    agg = seq.aggregate().target_attributions  # (L, T): the question's share by hand
    a, b = token_spans(am.tokenizer, p)["question"]
    assert torch.allclose(shares["question"], agg[a:b].abs().nansum(0) / agg.abs().nansum(0), atol=1e-6)


def _cfg(tmp_path, model, corpus, **kw) -> PipelineConfig:
    base = {"input": corpus, "output": str(tmp_path / "run"), "model": model, "use_ray": False,
            "generation_args": {"max_new_tokens": 3, "min_new_tokens": 3}}  # fmt: skip
    return PipelineConfig(**{**base, **kw})


def test_the_pipeline_tables_field_shares_as_the_api(tmp_path, chat_model):
    corpus = tmp_path / "qa.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in QA))
    cfg = _cfg(
        tmp_path, chat_model, str(corpus), prompt_template=TEMPLATE, chat_template=True, system_prompt="be brief"
    )
    manifest = run(cfg, progress=False)
    assert (manifest["ok"], manifest["errors"]) == (2, 1)
    errors = pl.read_parquet(f"{cfg.output}/tables/errors/*.parquet")
    assert errors["reason"].to_list() == ["missing_column"] and "context" in errors["message"][0]
    shares = pl.read_parquet(f"{cfg.output}/tables/field_shares/*.parquet")
    seqs = pl.read_parquet(f"{cfg.output}/tables/sequences/*.parquet")
    am = inseq_ray.load_model(chat_model, "saliency", device="cpu")
    for row in seqs.iter_rows(named=True):
        record = next(r for r in QA if r["question"] in row["source_text"])
        p = chat_prompt(am.tokenizer, prompt=fill_template(TEMPLATE, record), system="be brief")
        assert row["source_text"] == p.text
        ref = am.attribute(p.text, generation_args=cfg.generation_args, show_progress=False).sequence_attributions[0]
        want = sequence_field_shares(ref, token_spans(am.tokenizer, p))
        got = shares.filter(pl.col("seq_id") == row["seq_id"])
        for name, values in want.items():
            mine = got.filter(pl.col("field") == name).sort("step")["share"].to_list()
            assert mine == pytest.approx(values.tolist(), abs=1e-4), name
    per_record = shares.group_by("seq_id", "field").agg(pl.col("share").mean())  # the README's query
    assert per_record.filter(pl.col("field") == "context").height == 2
    assert run(cfg, progress=False)["already_complete"]


def test_messages_from_parquet_and_bad_ones_are_error_rows(tmp_path, chat_model):
    messages = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who sees the house"}],
        [{"role": "user", "content": "where is the river"}],
    ]
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.table({"messages": messages}), path)
    cfg = _cfg(tmp_path, chat_model, str(path), messages_column="messages")
    manifest = run(cfg, progress=False)
    assert (manifest["ok"], manifest["errors"]) == (2, 0)
    fields = set(pl.read_parquet(f"{cfg.output}/tables/field_shares/*.parquet")["field"])
    assert fields == {"system", "user[1]", "user[0]", "generated", "other"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": "oops"}) + "\n" + json.dumps({"messages": messages[1]}) + "\n")
    manifest = run(_cfg(tmp_path, chat_model, str(bad), messages_column="messages", output=str(tmp_path / "b")),
                   progress=False)  # fmt: skip
    assert (manifest["ok"], manifest["errors"]) == (1, 1)


def test_prompt_settings_are_checked_before_anything_runs(tmp_path):
    for kw, msg in (
        ({"prompt_template": TEMPLATE, "messages_column": "m"}, "drop --prompt-template"),
        ({"system_prompt": "x"}, "add --chat-template"),
        ({"prompt_template": "no fields"}, "names no"),
        ({"chat_template": True, "context_column": "c"}, "builds its own prompts"),
    ):
        with pytest.raises(ValueError, match=msg):
            PipelineConfig(output=str(tmp_path), **kw).validate()
    plain = PipelineConfig(output=str(tmp_path))
    assert "prompt_template" not in plain.results_settings()  # runs without prompts keep their fingerprint
    assert PipelineConfig(output=str(tmp_path), prompt_template=TEMPLATE).fingerprint() != plain.fingerprint()


def test_a_prompt_object_is_plain_data():
    assert Prompt("x").fields == {}
