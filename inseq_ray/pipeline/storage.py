"""URL handling and safe, atomic, idempotent writes through fsspec (local, s3://, gs://, ...).

Credentials are never handled here: fsspec/s3fs read them from the environment, instance profile or
workload identity. Keys are built only from safe characters and cannot escape the run prefix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec

from inseq_ray.errors import StorageError, UnsafeKeyError
from inseq_ray.redact import redact_url

SAFE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def safe_part(part: str) -> str:
    """Return ``part`` if it is a safe single path component, else raise."""
    if not isinstance(part, str) or not SAFE_KEY.match(part) or part in (".", "..") or ".." in part:
        raise UnsafeKeyError(f"Unsafe key component {part!r}: only letters, digits, '.', '_' and '-' are allowed.")
    return part


# Transient errors (503 SlowDown, throttling, timeouts) are retried by botocore with exponential backoff
# (standard mode: ``attempts`` tries, at most 20 s apart: with the default 8, about 1.5 minutes of outage per
# request); s3fs's own retry loop is set to one pass so the bound holds. A longer outage fails the shard with
# one StorageError line; nothing half-written is committed, and a rerun resumes from the committed shards.
STORAGE_ATTEMPTS = 8
TIMEOUTS = {"connect_timeout": 10, "read_timeout": 60}
WRITE_CHUNK_BYTES = 64 << 20  # objects written concurrently in chunks of at most this many bytes (bounded memory)
TMP_DIR = "_tmp"  # temp files live here (never inside folders that readers scan)
STALE_TMP_SECONDS = 3600  # temp files older than this belong to dead writers and are removed at start


def storage_options(url: str, attempts: int = STORAGE_ATTEMPTS) -> dict:
    """fsspec options for ``url``: the explicit retry policy for S3, nothing for other stores."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    return {"config_kwargs": {"retries": {"max_attempts": attempts, "mode": "standard"}, **TIMEOUTS}}


def refuse_credentials(url: str, what: str) -> None:
    """Credentials belong in the environment or a profile; a URL carrying them is refused (redacted in the error)."""
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if "@" in authority:
        raise ValueError(
            f"{what} {redact_url(url)!r} carries credentials (user:password@): put them in the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...) or a profile instead."
        )


class Storage:
    """All reads and writes under one run prefix."""

    def __init__(self, prefix: str, attempts: int = STORAGE_ATTEMPTS) -> None:
        refuse_credentials(prefix, "The output URL")
        self.prefix = prefix.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.prefix, **storage_options(self.prefix, attempts))
        if hasattr(self.fs, "retries"):  # s3fs: one pass around botocore's retries, so ``attempts`` bounds them
            self.fs.retries = 1
        self.is_local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol
        if self.is_local:  # absolute, so that object URIs load from any directory
            self.root = os.path.abspath(self.root)
            self.prefix = self.root
        self._made: set[str] = set()  # local folders known to exist

    def url(self, *parts: str) -> str:
        """Full URL of ``prefix/part/part``; every part must be a safe component."""
        return "/".join([self.prefix, *(safe_part(p) for p in parts)])

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *(safe_part(p) for p in parts)])

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write atomically: a temp file under ``_tmp/`` + rename locally; a single PUT (atomic) on object stores."""
        target = self.path(*parts)
        try:
            if self.is_local:
                self._makedirs(os.path.dirname(target))
                tmp = os.path.join(self._makedirs(self.path(TMP_DIR)), f"{uuid.uuid4().hex}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(tmp)
                    raise
            else:
                self.fs.pipe_file(target, data)
        except OSError as e:
            raise self._error("write", parts, e) from None
        return self.url(*parts)

    def _makedirs(self, folder: str) -> str:
        """``os.makedirs`` once per folder and Storage (thousands of objects share a few folders)."""
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        return folder

    def write_many(self, items: Sequence[tuple[tuple[str, ...], bytes]]) -> list[str]:
        """Write several objects; on object stores concurrently (fsspec's async batch), in chunks of at most
        :data:`WRITE_CHUNK_BYTES`. Returns their URLs in order."""
        if self.is_local:
            return [self.write_bytes(data, *parts) for parts, data in items]
        chunk: dict[str, bytes] = {}
        size = 0
        for parts, data in items:
            chunk[self.path(*parts)] = data
            size += len(data)
            if size >= WRITE_CHUNK_BYTES:
                self._pipe(chunk)
                chunk, size = {}, 0
        if chunk:
            self._pipe(chunk)
        return [self.url(*parts) for parts, _ in items]

    def _pipe(self, mapping: dict[str, bytes]) -> None:
        try:
            self.fs.pipe(mapping)
        except OSError as e:
            first = next(iter(mapping)).removeprefix(self.root).lstrip("/")
            raise self._error("write", tuple(first.split("/")), e) from None

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create ``parts`` only if it does not exist (local O_EXCL, S3 If-None-Match); False if it existed."""
        target = self.path(*parts)
        try:
            if self.is_local:  # whole or not at all: written aside, then linked in (link fails if it exists)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = os.path.join(self._makedirs(self.path(TMP_DIR)), f"{uuid.uuid4().hex}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.link(tmp, target)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(tmp)
            elif "s3" in self.fs.protocol:
                self.fs.pipe_file(target, data, mode="create")
            else:  # stores without conditional writes: write-then-read-back is the best available claim
                if self.fs.exists(target):
                    return False
                self.fs.pipe_file(target, data)
                return self.fs.cat_file(target) == data
        except FileExistsError:
            return False
        except OSError as e:
            raise self._error("write", parts, e) from None
        return True

    def clean_stale_tmp(self, max_age_s: float = STALE_TMP_SECONDS) -> int:
        """Remove temp files of dead writers (older than ``max_age_s``); returns how many."""
        if not self.is_local:
            return 0  # object stores write with one PUT: no temp files
        folder = self.path(TMP_DIR)
        if not os.path.isdir(folder):
            return 0
        now, removed = time.time(), 0
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            try:
                if now - os.path.getmtime(path) > max_age_s:
                    os.remove(path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        try:
            with self.fs.open(self.path(*parts), "rb") as f:
                return json.loads(f.read())
        except OSError as e:
            raise self._error("read", parts, e) from None

    def delete(self, *parts: str) -> None:
        """Remove one file (missing is fine)."""
        try:
            self.fs.rm_file(self.path(*parts))
        except FileNotFoundError:
            pass

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

    def _error(self, verb: str, parts: tuple[str, ...], e: OSError) -> StorageError:
        url = redact_url(self.url(*parts))
        hint = {
            errno.ENOSPC: "the disk is full: free space or choose another --output",
            errno.EROFS: "the output is read-only: choose a writable --output",
            errno.EACCES: "permission denied: check the permissions of --output",
            errno.EPERM: "permission denied: check the permissions of --output",
        }.get(e.errno or 0, "check that --output is reachable and writable, then rerun the same command to resume")
        return StorageError(f"cannot {verb} {url}: {e.strerror or type(e).__name__} ({hint}).")
