"""Where the study reads and writes. Every script runs from the repository root
(``uv run python -m docs.research.signals.<script>``), so the defaults are relative to it:

- ``--labels`` (env ``SIGNALS_LABELS``): the data CSV, default ``../shared/videos/labels.csv``
  (the same file ``drishtiksha eval --cross-validate`` reads; clip paths are relative to it);
- ``--work-dir`` (env ``SIGNALS_WORK``): default ``var/research/signals`` (git-ignored), holding
  ``cache/`` (extract.py), ``cache_long/`` (extract_long.py) and ``results.json`` (evaluate*.py);
- ``--mesh-model`` (env ``SIGNALS_MESH_MODEL``): mediapipe's ``face_landmark.tflite``, default
  ``<work-dir>/face_landmark.tflite`` (README.md says where it comes from).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class _Paths:
    labels = Path(os.environ.get("SIGNALS_LABELS", "../shared/videos/labels.csv"))
    work = Path(os.environ.get("SIGNALS_WORK", "var/research/signals"))
    mesh_model_env = os.environ.get("SIGNALS_MESH_MODEL")

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    @property
    def cache_long(self) -> Path:
        return self.work / "cache_long"

    @property
    def results(self) -> Path:
        return self.work / "results.json"

    @property
    def mesh_model(self) -> Path:
        if self.mesh_model_env:
            return Path(self.mesh_model_env)
        return self.work / "face_landmark.tflite"


P = _Paths()


def add_args(ap: argparse.ArgumentParser, mesh_model: bool = False) -> None:
    ap.add_argument("--labels", type=Path, default=P.labels, help="data CSV (%(default)s)")
    ap.add_argument("--work-dir", type=Path, default=P.work, help="caches, results (%(default)s)")
    if mesh_model:
        ap.add_argument("--mesh-model", type=Path, default=None, help="face_landmark.tflite")


def apply(args: argparse.Namespace) -> None:
    """Set the paths from parsed arguments (module state: worker processes are forked)."""
    P.labels = args.labels
    P.work = args.work_dir
    if getattr(args, "mesh_model", None) is not None:
        P.mesh_model_env = str(args.mesh_model)
