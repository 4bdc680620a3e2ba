"""Export files: gzip written under a temporary name, hashed as written, published by rename."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO


class _HashingFile:
    """The raw file under gzip: counts and hashes the compressed bytes as they are written."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class Output:
    """One gzip file, written under a temporary name in the destination until :meth:`publish`."""

    def __init__(self, final: Path, fmt: str) -> None:
        self.final, self.format = final, fmt
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self._raw = open(self.tmp, "xb")  # noqa: SIM115 - closed by finish() or discard()
        self._hashing = _HashingFile(self._raw)
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._hashing, mtime=0, compresslevel=6)

    def finish(self) -> dict[str, Any]:
        self.gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return {"name": self.final.name, "format": self.format, "bytes": self._hashing.size,
                "sha256": self._hashing.sha256.hexdigest()}  # fmt: skip

    def discard(self) -> None:
        for closer in (self.gz.close, self._raw.close):
            with contextlib.suppress(OSError, ValueError):
                closer()
        self.tmp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
