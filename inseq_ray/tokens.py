"""``TokenWithId``: one token and its id (a leaf type shared by the models layer and the outputs)."""

from __future__ import annotations

from typing import NamedTuple


class TokenWithId(NamedTuple):
    token: str
    id: int
