"""The error-reason codes: one enum, documented in docs/tables.md, used by every error row."""

from __future__ import annotations

import re
from pathlib import Path

import inseq_ray
from inseq_ray.errors import InputError, NonFiniteAttributionError, Reason
from inseq_ray.pipeline.blocks import reason_code

DOCS = Path(__file__).parent.parent / "docs" / "tables.md"


def test_docs_list_exactly_the_reason_codes():
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith("| reason |"))
    documented = set(re.findall(r"`([a-z_0-9]+)`", row))
    assert documented == {r.value for r in Reason}


def test_exceptions_map_to_reasons():
    assert reason_code(InputError("x", Reason.TOO_LONG)) is Reason.TOO_LONG
    assert reason_code(NonFiniteAttributionError("x")) is Reason.NON_FINITE
    assert reason_code(ValueError("x")) is Reason.BAD_INPUT
    assert reason_code(RuntimeError("x")) is Reason.INTERNAL_ERROR


def test_every_public_exception_is_exported_and_a_value_error_where_user_facing():
    for name in ("InputError", "UnknownIdError", "ModelConformanceError"):
        assert issubclass(getattr(inseq_ray, name), ValueError)
    assert issubclass(inseq_ray.NonFiniteAttributionError, ArithmeticError)
