"""The API of a live daemon (a subprocess) as its outside clients use it: the older service's own
Python snippet with ``requests``, its Node.js client (axios + form-data), and schemathesis
generating requests from ``/openapi.json``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import yaml
from schemathesis import checks

from tests.media import make_video
from tests.net import free_port

pytestmark = pytest.mark.e2e

API_KEY = "e2e-secret-key-0123456789abcdef"
# The "Python Client Example" of the older service's README, copied verbatim.
SEED_SNIPPET = Path(__file__).parent / "seed_readme_client.txt"
NODE_CLIENT = Path(__file__).parent / "node"
# A SigLIP tower small enough for a CPU test; the older service's clients ask for this key.
TINY_SIGLIP = {
    "weights": "dummy",
    "num_frames": 4,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
    "lstm_hidden": 16,
}


class LiveDaemon:
    """``drishtiksha run`` with the API key in ``API_KEY``, as the older service took it."""

    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "daemon.log"
        config = root / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "database": {"url": database_url},
                    "device": "cpu",
                    "cpu_threads": 1,
                    "inboxes": [
                        {
                            "name": "e2e",
                            "path": str(root / "inbox"),
                            "work": str(root / "work"),
                            "done": str(root / "done"),
                            "failed": str(root / "failed"),
                            "detectors": ["color-cues-lstm-v1", "siglip-lstm-v3"],
                        }
                    ],
                    "detectors": {
                        "color-cues-lstm-v1": {"weights": "dummy", "num_frames": 8},
                        "siglip-lstm-v3": TINY_SIGLIP,
                    },
                    "batching": {"max_videos": 4, "max_wait_s": 0.05, "prepare_workers": 1},
                    "queue": {"lease_s": 10, "poll_s": 0.2},
                    "api": {"host": "127.0.0.1", "port": self.port, "request_timeout_s": 120},
                }
            )
        )
        env = {**os.environ, "API_KEY": API_KEY}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor", "run", "--config", str(config)],
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 120
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the daemon did not become ready:\n{self.tail()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return bool(json.load(r)["ready"])
        except OSError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str
) -> Iterator[LiveDaemon]:
    """One daemon per database backend for the whole module: starting one (imports, detector
    set-up) takes most of a test's time here, and each test sends its own clip and reads only
    its own answers."""
    d = LiveDaemon(tmp_path_factory.mktemp("daemon"), module_database_url)
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0, d.tail()


@pytest.fixture(scope="session")
def node_modules() -> None:
    """axios and form-data as the older service's backend had them, installed from the committed
    lock file by .ci/run (``npm ci``): nothing is downloaded while tests run. Missing, the Node.js
    test is skipped, except under CI (``CI=true``), where it fails so that it cannot pass
    unseen."""
    missing = None
    if shutil.which("node") is None:
        missing = "node is needed for the Node.js client"
    elif not all((NODE_CLIENT / "node_modules" / m).is_dir() for m in ("axios", "form-data")):
        missing = f"axios and form-data are not installed: run npm ci --prefix {NODE_CLIENT}"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)


def seed_python_snippet() -> str:
    """The "Python Client Example" of the older service's README, as published."""
    return SEED_SNIPPET.read_text()


def test_the_seed_readme_python_snippet(daemon: LiveDaemon, tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=15)
    snippet = seed_python_snippet()
    # Only the three settings its users edit are filled in; the code runs as published.
    for old, new in [
        ('API_KEY = "your_api_key_here"', f'API_KEY = "{API_KEY}"'),
        ('BASE_URL = "http://localhost:8000"', f'BASE_URL = "{daemon.url}"'),
        ('VIDEO_PATH = "path/to/your/video.mp4"', f'VIDEO_PATH = "{video}"'),
    ]:
        assert old in snippet
        snippet = snippet.replace(old, new)
    run = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr + daemon.tail()
    lines = run.stdout.splitlines()
    assert lines[0] in ("Prediction: REAL", "Prediction: FAKE")
    assert lines[1].startswith("Confidence: 0.") or lines[1] == "Confidence: 1.000"
    assert lines[2].startswith("Processing Time: ")
    assert lines[2].endswith("s")
    assert lines[3] == "Frame Analysis: 8 frames"
    assert lines[4].startswith("Temporal Patterns: {'consistency_score': ")


@pytest.mark.usefixtures("node_modules")
def test_the_seed_nodejs_client(daemon: LiveDaemon, tmp_path: Path) -> None:
    # Other bytes than the Python test's clip: the shared daemon would answer that one from the
    # results it stored, and this test would then see no detector run.
    video = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=15, size=(336, 240))
    # node finds axios and form-data in node_modules beside client.js.
    env = {
        **os.environ,
        "ML_SERVER_URL": daemon.url,
        "ML_API_KEY": API_KEY,
        "ML_SERVER_TIMEOUT": "300000",
    }
    run = subprocess.run(
        ["node", str(NODE_CLIENT / "client.js"), str(video)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr + daemon.tail()
    out: dict[str, Any] = json.loads(run.stdout)
    assert out["health"]["success"] is True
    assert out["health"]["data"]["status"] == "healthy"
    assert out["models"] == {
        "success": True,
        "models": ["color-cues-lstm-v1", "siglip-lstm-v3"],
    }
    quick = out["analyze"]
    assert quick["success"] is True
    assert quick["model"] == "siglip-lstm-v3"
    assert quick["data"]["prediction"] in ("REAL", "FAKE")
    assert quick["processingTime"] == quick["data"]["processing_time"]
    assert set(quick["data"]) == {
        "prediction",
        "confidence",
        "processing_time",
        "model",
        "timestamp",
        # ours on top: the weights behind the verdict, and the dummy-weights warning
        "weights",
        "warning",
    }
    detailed = out["detailed"]["data"]
    assert detailed["model"] == "color-cues-lstm-v1"
    assert detailed["model_info"]["architecture"] == "ColorCues-LSTM"
    assert len(out["frames"]["data"]["frame_predictions"]) == 8
    assert out["unknownModel"] == {
        "success": False,
        "error": "Request failed with status code 422",
        "status": 422,
    }


def run_operation(operation: Any, validators: list[Any]) -> None:
    """Generated requests for one operation, each answer checked by ``validators``."""

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=8,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=validators)

    check()


def test_schemathesis_against_the_live_openapi(daemon: LiveDaemon) -> None:
    """Every operation of /openapi.json, with generated requests: no server error, and every
    answer (status, headers, content type, body) as the document says."""
    schema = schemathesis.openapi.from_url(daemon.url + "/openapi.json")
    selected = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
        checks.negative_data_rejection,
        checks.ignored_auth,
    ]
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        run_operation(operation, selected)
        operations.append(f"{operation.method.upper()} {operation.path}")
    # Schemathesis leaves out the operation that serves the document it was loaded from.
    documented = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if method != "parameters" and path != "/openapi.json"
    }
    assert sorted(operations) == sorted(documented)
