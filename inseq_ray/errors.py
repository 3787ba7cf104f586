"""Every public exception of inseq_ray, and the reason codes of the pipeline's ``errors`` table.

All user-facing errors are ``ValueError`` subclasses (bad input, unknown ids, unsupported models, a store
or run prefix that cannot be used) except :class:`NonFiniteAttributionError` (an arithmetic failure of the
model itself), the pipeline's run outcomes (:class:`RunFailed`, :class:`PipelineError`, :class:`ShardError`:
``RuntimeError``) and :class:`RunInterrupted` (a ``KeyboardInterrupt``). The CLI turns ``ValueError`` into
exit 2 and ``RuntimeError`` into exit 1, each one line.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a record is in the ``errors`` table (its ``reason`` column; documented in docs/tables.md)."""

    EMPTY = "empty"  # no text to attribute
    INVALID_UTF8 = "invalid_utf8"  # a text line that is not UTF-8
    BAD_JSON = "bad_json"  # a JSONL line that does not parse or is not an object
    MISSING_COLUMN = "missing_column"  # the configured source/target column is absent
    TOO_LONG = "too_long"  # over the model's maximum length
    TARGET_MISMATCH = "target_mismatch"  # decoder-only target that does not start with its prompt
    NON_FINITE = "non_finite"  # attributions overflowed (inf/NaN)
    OOM = "oom"  # does not fit in device memory even alone
    BAD_INPUT = "bad_input"  # any other input the model cannot attribute
    INTERNAL_ERROR = "internal_error"  # a bug or an unexpected failure: the message says what


class InputError(ValueError):
    """A user input that cannot be attributed; the message names the input and the fix.

    ``code`` is the :class:`Reason` the pipeline stores in its errors table.
    """

    def __init__(self, message: str, code: Reason | str = Reason.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = Reason(code)


class UnknownIdError(ValueError):
    """An unknown registry id (method, step function, aggregation...); the message lists the valid ones."""


class ModelConformanceError(ValueError):
    """The attribution forward of a model would not equal the model's own forward from ids."""


class WeightsNotReturned(Exception):
    """An attention module returned no weights (FSMT's and T5's, unless the forward asks for them): ALTI+ runs
    the forward again with ``output_attentions``."""


class UnsafeKeyError(ValueError):
    """A storage key part that could escape its prefix or is not portable."""


class AttributionFileError(ValueError):
    """A saved attribution file that cannot be read (broken, not ours, or over the size limits); names the file."""


class InputChangedError(ValueError):
    """An input file changed after the run planned it (size or version); the message names the file."""


class NonFiniteAttributionError(ArithmeticError):
    """Attributions of an input contain inf/NaN (e.g. fp16 overflow); names the input."""


class StorageError(ValueError):
    """A write or read under the run prefix failed; the message names the URL and what to do."""


class RunConflictError(ValueError):
    """The output prefix holds a run of another configuration or another input; the message says what differs."""


class RunFailed(RuntimeError):
    """The run ended (or was stopped) without the success it was asked for; the message says why."""


class PipelineError(RuntimeError):
    """A failure inside the actors, reduced to its cause's one line (the full log is named)."""


class ShardError(RuntimeError):
    """A shard failed with a message that named a signed URL: the same message, redacted."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how far it got and that a rerun resumes."""


__all__ = [
    "AttributionFileError",
    "InputChangedError",
    "InputError",
    "ModelConformanceError",
    "NonFiniteAttributionError",
    "PipelineError",
    "Reason",
    "RunConflictError",
    "RunFailed",
    "RunInterrupted",
    "ShardError",
    "StorageError",
    "UnknownIdError",
    "UnsafeKeyError",
]
