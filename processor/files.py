"""The file lifecycle: inbox -> work area -> done/ (with a .verdict.json) or failed/ (with a
.error.json). Nothing here ever deletes or overwrites a user's file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

VERDICT_SUFFIX = ".verdict.json"
ERROR_SUFFIX = ".error.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streamed sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def move_no_overwrite(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, raising FileExistsError rather than replacing ``dst``.

    A hard link refuses an existing target atomically, which ``os.rename`` never does on POSIX;
    filesystems without hard links (some SMB mounts) fall back to check-then-rename, and another
    filesystem falls back to copy-then-unlink.
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_no_overwrite(src, dst)
            src.unlink()
            return
        if dst.exists():
            raise FileExistsError(errno.EEXIST, "target exists", str(dst)) from exc
        os.rename(src, dst)
        return
    src.unlink()


def _copy_no_overwrite(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def free_name(folder: Path, name: str, sidecar_suffix: str) -> Path:
    """``folder/name``, or ``name-1.ext``, ``name-2.ext``... when it or its sidecar exists."""
    stem, suffix = os.path.splitext(name)
    candidate = folder / name
    n = 0
    while candidate.exists() or candidate.with_name(candidate.name + sidecar_suffix).exists():
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON via a temporary file in the same folder and a rename, so readers never see a
    half-written sidecar."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable across power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
