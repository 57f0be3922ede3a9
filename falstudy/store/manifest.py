"""Which spool files falstudy wrote: a hidden ``.manifest.json`` per spool folder.

``write_parquet`` records every file it writes (name -> SHA-256 of its bytes) in the manifest of
the file's folder; the ingester loads only files whose folder's manifest lists them with the same
digest, and whose schema fits their table. A Parquet file dropped into a run folder by anything
else (a ``COPY ... TO``, a copy from elsewhere, a hand edit) is refused with its path.

Writers and the ingester's check of one folder take turns on ``.manifest.lock`` (a filelock), so
the check never sees a file and a manifest from two different writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

MANIFEST = ".manifest.json"
LOCK = ".manifest.lock"


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float = 60.0) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(str(folder / LOCK), timeout=timeout_s):
        yield


def read(folder: Path) -> dict[str, str]:
    """name -> digest of the files falstudy wrote in ``folder`` ({} if none or unreadable)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def record(path: Path, sha256: str) -> None:
    """Note that ``path`` now holds bytes with digest ``sha256`` (call under ``folder_lock``)."""
    folder = path.parent
    files = read(folder)
    files[path.name] = sha256
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=0) + "\n")
    os.replace(tmp, folder / MANIFEST)


def untrusted(files: list[Path]) -> dict[Path, str]:
    """The files of ``files`` that no falstudy writer wrote as they are now, with why."""
    refused: dict[Path, str] = {}
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    for folder, paths in by_folder.items():
        with folder_lock(folder):
            listed = read(folder)
            for path in paths:
                want = listed.get(path.name)
                if want is None:
                    refused[path] = (f"not listed in {folder / MANIFEST} (falstudy did not write it)"
                                     if (folder / MANIFEST).exists() else
                                     f"{folder} has no {MANIFEST}: not written by this falstudy (if an older one "
                                     "wrote it, `falstudy ingest --adopt` trusts such folders)")
                    continue
                try:
                    if digest(path) != want:
                        refused[path] = f"changed since falstudy wrote it (its digest differs from {folder / MANIFEST})"
                except FileNotFoundError:
                    pass  # deleted since the scan: the ingester treats it as gone
    return refused


def adopt(files: list[Path]) -> list[Path]:
    """Record, in folders that have no manifest at all (spool written by a falstudy from before
    manifests), every given file as it is now; returns the files adopted. Folders with a
    manifest are left alone: their unlisted files stay refused."""
    adopted = []
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    for folder, paths in by_folder.items():
        with folder_lock(folder):
            if (folder / MANIFEST).exists():
                continue
            for path in paths:
                record(path, digest(path))
                adopted.append(path)
    return adopted
