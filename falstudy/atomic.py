"""One way to write a file so that readers see it whole or not at all: a hidden temp file in the
same folder, fsync, then ``os.replace`` (atomic on POSIX). Used by the spool, checkpoints, the
sweep's trial results and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Callable, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb",
                 commit: Callable[[Path, Path], None] | None = None) -> Iterator[IO]:
    """``with atomic_write(p) as fh: fh.write(...)``: ``p`` appears only when the block succeeds;
    on an error the old file (if any) stays and the temp file is removed. ``commit(tmp, p)``, if
    given, does the final rename itself (e.g. under a lock, with bookkeeping)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden and with a .tmp suffix, so neither the spool's scan nor globs like *.parquet see it
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not land before the bytes
        (commit or os.replace)(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
