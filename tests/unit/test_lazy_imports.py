"""Start-up stays quick because heavy libraries load where they are used: each check runs a
fresh interpreter and looks at what the import put in ``sys.modules`` (never at the clock)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_REPORT = "import json, sys\nprint(json.dumps(sorted(sys.modules)))"
# Seconds of import each; botocore's exceptions alone are cheap and may load, its client not.
HEAVY = {"torch", "transformers", "matplotlib", "botocore.client", "aiobotocore", "onnxruntime"}


def _imported_after(code: str) -> set[str]:
    """Modules loaded once ``code`` has run in a new interpreter."""
    probe = code + "\n" + _REPORT
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_command_line_imports_no_heavy_library_nor_the_database() -> None:
    loaded = _imported_after("import processor.cli")
    assert not loaded & {*HEAVY, "sqlalchemy", "alembic", "av", "cv2"}


def test_the_daemon_with_the_default_detectors_needs_no_torch() -> None:
    loaded = _imported_after(
        "import processor.daemon\n"
        "from detectors import registry\n"
        "from processor.config import Config\n"
        "from processor.loader import build_detectors\n"
        "build_detectors(Config(), ['face-cues-v1', 'c2pa-provenance'])"
    )
    assert not loaded & HEAVY
    assert "sqlalchemy" in loaded, "the probe did import the daemon's wiring"


def test_every_detector_is_listed_without_torch_or_transformers() -> None:
    loaded = _imported_after(
        "from detectors import registry\n"
        "found = registry.available()\n"
        "assert {'siglip-lstm-v1', 'siglip-lstm-v3', 'color-cues-lstm-v1'} <= set(found), found"
    )
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_a_detector_is_imported_only_when_named() -> None:
    loaded = _imported_after(
        "import sys\n"
        "from detectors import registry\n"
        "assert registry.find('c2pa-provenance') is not None\n"
        "assert 'detectors.siglip_lstm' not in sys.modules\n"
        "assert 'detectors.color_cues' not in sys.modules"
    )
    assert "c2pa" in loaded


def test_cpu_threads_reach_torch_when_a_detector_loads_it_at_setup() -> None:
    code = (
        "from processor.config import Config\n"
        "from processor.loader import load_pipeline\n"
        "load_pipeline(Config.model_validate({'device': 'cpu', 'cpu_threads': 1, 'inboxes': "
        "[{'name': 'd', 'detectors': ['color-cues-lstm-v1']}], 'detectors': "
        "{'color-cues-lstm-v1': {'weights': 'dummy'}}}))\n"
        "import torch\n"
        "print(torch.get_num_threads())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
