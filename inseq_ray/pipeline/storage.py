"""URL handling and safe, atomic, idempotent writes through fsspec (local, s3://, gs://, ...).

Credentials are never handled here: fsspec/s3fs read them from the environment, instance profile or
workload identity. Keys are built only from safe characters and cannot escape the run prefix.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

import fsspec

from inseq_ray.errors import UnsafeKeyError

SAFE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def safe_part(part: str) -> str:
    """Return ``part`` if it is a safe single path component, else raise."""
    if not isinstance(part, str) or not SAFE_KEY.match(part) or part in (".", "..") or ".." in part:
        raise UnsafeKeyError(f"Unsafe key component {part!r}: only letters, digits, '.', '_' and '-' are allowed.")
    return part


def redact_url(url: str) -> str:
    """Drop any user:password@ part of a URL before it is logged or stored."""
    return re.sub(r"//[^/@]*@", "//", url)


class Storage:
    """All reads and writes under one run prefix."""

    def __init__(self, prefix: str) -> None:
        if "@" in prefix.split("/", 3)[2 if "://" in prefix else 0]:
            raise ValueError("Put credentials in the environment or a config profile, not in the output URL.")
        self.prefix = prefix.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.prefix)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    def url(self, *parts: str) -> str:
        """Full URL of ``prefix/part/part``; every part must be a safe component."""
        return "/".join([self.prefix, *(safe_part(p) for p in parts)])

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *(safe_part(p) for p in parts)])

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write atomically: temp file + rename locally; a single PUT (atomic) on object stores."""
        target = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            with self.fs.open(target, "wb") as f:
                f.write(data)
        return self.url(*parts)

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        with self.fs.open(self.path(*parts), "rb") as f:
            return json.loads(f.read())

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def list_names(self, *parts: str) -> list[str]:
        """File names directly under ``prefix/parts`` (empty when the folder does not exist)."""
        folder = self.path(*parts)
        try:
            self.fs.invalidate_cache(folder)
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
