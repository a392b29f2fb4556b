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


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s filesystem accepts."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def fit_name(stem: str, tail: str, limit: int) -> str:
    """``stem + tail``, the stem cut so the whole fits in ``limit`` bytes of the filesystem's
    encoding. A name that already fits is kept as it was."""
    encoded, room = os.fsencode(stem), max(limit - len(os.fsencode(tail)), 0)
    if len(encoded) <= room:
        return stem + tail
    # Never cut a UTF-8 character in half: step back over continuation bytes (10xxxxxx).
    while 0 < room < len(encoded) and encoded[room] & 0xC0 == 0x80:
        room -= 1
    return os.fsdecode(encoded[:room]) + tail


def free_name(folder: Path, name: str, sidecar_suffix: str) -> Path:
    """``folder/name``, or ``name-1.ext``, ``name-2.ext``... when it or its sidecar exists.

    The sidecar is ``<name><sidecar_suffix>``, so a name near the filesystem's limit (255 bytes
    on most) is shortened, at a character boundary and keeping its extension, until the sidecar's
    name fits too: a long name must never stop a job from being finished.
    """
    limit = name_max(folder)
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:
        stem, suffix = name, ""  # not an extension: a long tail after the last dot
    n = 0
    while True:
        tail = (f"-{n}" if n else "") + suffix
        fitted = fit_name(stem, tail, limit - len(sidecar_suffix))
        candidate = folder / fitted
        sidecar = folder / (fitted + sidecar_suffix)
        if not candidate.exists() and not sidecar.exists():
            return candidate
        n += 1


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON via a temporary file in the same folder and a rename, so readers never see a
    half-written sidecar."""
    # A short fixed prefix: the target's own name may already be as long as the filesystem allows.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sidecar-", suffix=".tmp")
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
