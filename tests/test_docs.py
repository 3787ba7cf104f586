"""Every code block of README.md and docs/*.md runs as written.

Blocks run in a scratch folder that holds a finished demo run at ``out/run`` (what the docs query).
A block that cannot run here (a cluster, a bucket, the Hub) carries an HTML comment on the line above it,
``<!-- docs-test: skip: <reason and where it is tested instead> -->``. Blocks without a language are
diagrams, not code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- docs-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


def blocks() -> list:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if not m.group("lang"):
                continue
            line = text[: m.start("code")].count("\n")
            mark = m.group("mark") or ""
            marks = [pytest.mark.skip(reason=mark.removeprefix("skip:").strip())] if mark.startswith("skip") else []
            if "engine_bench" in m.group("code"):
                marks.append(pytest.mark.slow)
            out.append(pytest.param(m.group("lang"), m.group("code"), id=f"{doc.name}:{line}", marks=marks))
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder with the demo's finished run at out/run (local blocks, same corpus and model)."""
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run

    root = tmp_path_factory.mktemp("docs")
    for name in ("benchmarks", "jobs", "scripts"):  # commands in the docs name repo paths
        (root / name).symlink_to(ROOT / name)
    run(PipelineConfig(output=str(root / "out" / "run"), use_ray=False), progress=False)
    return root


def _env(workdir: Path) -> dict:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{ROOT}/.venv/bin:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "INSEQ_RAY_CACHE": str(workdir / "cache"),
        "MPLBACKEND": "Agg",
        "COLUMNS": "100",
    }


BENCH_SIZES = {"gpt2-small": "tiny-gpt2", "bart-base": "tiny-bart"}  # same script, same flags, a tiny model


def tiny(code: str) -> str:
    """A benchmark block as written, on the benchmark's tiny model: the test checks that the command runs (its
    figures are the script's job), and a GPT-2-small-sized run takes minutes on a loaded 2-core machine."""
    if "benchmarks/" not in code:
        return code
    for size, small in BENCH_SIZES.items():
        code = code.replace(f"--model {size}", f"--model {small}")
    return code


@pytest.mark.parametrize(("lang", "code"), blocks())
def test_code_block_runs_as_written(workdir, lang, code):
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    elif lang in ("bash", "sh"):
        cmd = ["bash", "-euo", "pipefail", "-c", tiny(code).replace(".venv/bin/python", sys.executable)]
    else:
        pytest.skip(f"{lang} blocks are not code to run")
    out = subprocess.run(cmd, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert "Traceback" not in out.stderr


def test_the_readme_example_produces_real_words():
    import inseq_ray as inseq
    from inseq_ray.toy.tasks import LEXICON

    model = inseq.load_model("toy:translator", device="cpu")
    for text in model.generate(["the small cat sees a red dog", "every old farmer likes the green tree"]):
        assert text.split() and set(text.split()) <= set(LEXICON.values()), text
