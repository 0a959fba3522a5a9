"""The Prover's content-addressed array store: binary arrays (``.npy`` bytes of values, probes,
datamodels, uploaded scores) as files named by the SHA-256 of their bytes.

Files are written atomically (temporary file + rename, mode 0600), so a crash never leaves a
half-written array behind (the temporary files of a killed writer are removed at start-up);
every read re-hashes the bytes, so a file damaged afterwards is never served or signed. The
tables that name these arrays are in :mod:`prover_service.tables`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from prover_service.errors import CorruptArray, StoreError

log = logging.getLogger("prover_service")

__all__ = ["ArrayStore"]

_STARTED = time.time()


def _alive(pid: int, tmp: Path) -> bool:
    """Whether the writer ``pid`` of ``tmp`` may still be writing it: a live process here (our
    own pid only for a file newer than this process, as PID 1 in a restarted container)."""
    if pid == os.getpid():
        try:
            return tmp.stat().st_mtime >= _STARTED
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArrayStore:
    """Content-addressed files: ``root/ab/abcdef...`` named by the SHA-256 of their bytes.

    Every :meth:`get` re-hashes what it read: damaged bytes raise :class:`CorruptArray` and are
    never served or signed. ``used_bytes`` is the store's size (for the disk quota).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create array store {str(root)!r}: {exc.strerror}") from None
        self._lock = threading.Lock()
        self.removed_temporaries = self._remove_orphans()
        self.used_bytes = sum(p.stat().st_size for p in self._files())

    def _remove_orphans(self) -> int:
        """Delete temporary files that no live writer holds: a write killed before its rename
        (``tmp.PID.*`` of a process no longer running here, or a ``tmp*`` of an older
        version). The count removed."""
        removed = 0
        for p in self.root.glob("??/tmp*"):
            parts = p.name.split(".")
            if len(parts) >= 3 and parts[0] == "tmp" and parts[1].isdigit():
                if _alive(int(parts[1]), p):
                    continue
            try:
                p.unlink()
                removed += 1
            except OSError:
                continue
        if removed:
            log.warning("array store %s: removed %d temporary file(s) of interrupted writes",
                        self.root, removed)  # fmt: skip
        return removed

    def _files(self) -> list[Path]:
        return [p for p in self.root.glob("??/*") if p.is_file() and len(p.name) == 64]

    def _path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise KeyError(sha)
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store bytes (idempotent; a damaged copy is replaced); return their SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if path.exists():
            try:
                self.get(sha)
                return sha
            except CorruptArray:
                pass  # rewritten below
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"tmp.{os.getpid()}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with self._lock:
            self.used_bytes += len(data)
        return sha

    def has(self, sha: str) -> bool:
        """Whether a file is stored under ``sha`` (not checked: :meth:`get` checks)."""
        return self._path(sha).is_file()

    def get(self, sha: str) -> bytes:
        """The bytes stored under ``sha``, checked against it; KeyError if absent."""
        data = self.read(sha)
        if hashlib.sha256(data).hexdigest() != sha:
            raise CorruptArray(f"array {sha[:16]}... is damaged: its bytes do not match its name")
        return data

    def read(self, sha: str) -> bytes:
        """The bytes stored under ``sha``, *not* checked (KeyError if absent): for a reader that
        checks them against a signed hash itself (the audit page's
        :class:`protocol.transcript.ArraySource`), so a damaged file is reported as the
        transcript's fault, the same way an auditor holding those bytes would see it."""
        path = self._path(sha)
        if not path.is_file():
            raise KeyError(sha)
        return path.read_bytes()

    def discard(self, sha: str) -> None:
        """Remove a (damaged) array, so that its job recomputes it."""
        path = self._path(sha)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - size)

    def verify_all(self) -> list[str]:
        """Re-hash every file; the names of the damaged ones."""
        bad = []
        for path in self._files():
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != path.name:
                bad.append(path.name)
        return bad
