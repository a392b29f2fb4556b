"""Read one file's C2PA manifest store in a child process: ``python -m detectors.c2pa_probe``.

c2pa-rs runs in-process through ctypes, and hostile files can make it use about 140 times their
size in memory (a large CBOR assertion) or time quadratic in the number of boxes; a worker
thread cannot be interrupted and an out-of-memory abort would take the daemon down. So the
daemon runs the reader here, under an address-space limit and the caller's timeout, and reads
one JSON object from stdout. This module imports only the standard library and ``c2pa``.

Protocol: argv ``PATH MAX_BYTES``; stdin the reader settings (JSON). stdout one of
``{"kind": "none"}``, ``{"kind": "store", "store": {...}}`` (the reader's manifest store),
``{"kind": "unsupported"}`` (a format C2PA cannot embed a manifest in), or
``{"kind": "error", "message": "..."}``.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def read(path: str, settings: str) -> dict[str, Any]:
    """The outcome for ``path`` under reader ``settings`` (JSON), as the protocol says."""
    import c2pa

    try:
        context = c2pa.Context.from_json(settings)
        with open(path, "rb") as stream:
            # The format comes from the bytes: uploads and S3 copies keep no useful extension.
            reader = c2pa.Reader.try_create(stream, context=context)
            if reader is None:
                return {"kind": "none"}
            with reader:
                return {"kind": "store", "store": json.loads(reader.json())}
    except c2pa.C2paError.NotSupported:
        return {"kind": "unsupported"}
    except (c2pa.C2paError, ValueError, OSError) as exc:
        return {"kind": "error", "message": str(exc)}
    except MemoryError:
        return {"kind": "error", "message": "out of memory"}


def main() -> None:
    path, max_bytes = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    json.dump(read(path, sys.stdin.read()), sys.stdout)


if __name__ == "__main__":
    main()
