"""The SigLIP backbone through onnxruntime: the same embeddings and verdicts as torch (float32
closely, int8 weights within quantisation error), exported once and reused from the disk cache,
keyed by weights and quantisation, exported again when the cached file is damaged, shared by
v1 and v3, and ``runtime: torch`` unchanged."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from detectors import onnx_runtime, siglip_lstm
from detectors.base import DetectorResult, SampledFrames, VideoInfo
from detectors.errors import DetectorError
from detectors.frames import DecodeLimits
from detectors.onnx_runtime import OnnxModule
from detectors.siglip_lstm import (
    KEY_V1,
    KEY_V3,
    SiglipInput,
    SiglipLSTMConfig,
    SiglipLSTMv1,
    SiglipLSTMv3,
    SiglipLSTMv3Config,
)
from processor.pipeline import Pipeline
from tests.media import make_video

TINY: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "lstm_hidden": 16,
    # Seeds of their own: a dummy tower is shared by every detector of its seed in the process,
    # and another module's test may have hooked one of its own.
    "seed": 100,
}
INFO = VideoInfo("mp4", "h264", 64, 48, 25.0, 2.0)
# int8 weights move the tiny tower's embeddings (values up to ~3) by up to ~0.06.
INT8_EMBEDDING_ATOL = 0.2
INT8_PROBABILITY_ATOL = 0.02


@pytest.fixture(autouse=True)
def _fresh_sessions() -> Iterator[None]:
    """Each test finds no session left in memory by another, so loads go to its disk cache."""
    siglip_lstm._SESSIONS.clear()
    siglip_lstm._EMBEDDINGS.clear()
    yield
    siglip_lstm._SESSIONS.clear()
    siglip_lstm._EMBEDDINGS.clear()


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every export made during the test, by target path."""
    made: list[Path] = []
    real = onnx_runtime._export

    def counted(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
        made.append(path)
        real(module, example, path)

    monkeypatch.setattr(onnx_runtime, "_export", counted)
    return made


def _v1(cache: Path, **config: Any) -> SiglipLSTMv1:
    detector = SiglipLSTMv1(SiglipLSTMConfig(**{**TINY, "onnx_cache": cache, **config}))
    detector.setup("cpu")
    return detector


def _items(detector: SiglipLSTMv1, counts: list[int]) -> list[SiglipInput]:
    rng = np.random.default_rng(0)
    items = []
    for n in counts:
        images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
        items.append(detector.prepare(SampledFrames(INFO, images, [0.1 * i for i in range(n)])))
    return items


def _result(outcome: DetectorResult | DetectorError) -> DetectorResult:
    assert isinstance(outcome, DetectorResult), outcome
    return outcome


def _probabilities(detector: SiglipLSTMv1, items: list[SiglipInput]) -> list[float]:
    siglip_lstm._EMBEDDINGS.clear()
    out = []
    for outcome in detector.predict(items):
        probability = _result(outcome).fake_probability
        assert probability is not None
        out.append(probability)
    return out


def _onnx(detector: SiglipLSTMv1 | SiglipLSTMv3) -> OnnxModule:
    assert detector._onnx is not None
    return detector._onnx


def _cached(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.onnx"))


# --- agreement with torch ----------------------------------------------------------------------


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_onnx_embeddings_and_verdicts_follow_torch(tmp_path: Path, quantize: str) -> None:
    reference = _v1(tmp_path, runtime="torch", seed=104)
    # Chunks of 3 frames: batches of 3 and 1 through a graph traced with 2.
    onnx = _v1(tmp_path, runtime="onnx", quantize=quantize, seed=104, max_frames_per_batch=3)
    items = _items(reference, [7, 2, 5])
    pixels = torch.cat([item.pixels for item in items])

    assert reference._net is not None
    with torch.inference_mode():
        expected = reference._net.embed(pixels).numpy()
    got = _onnx(onnx).run(pixels.numpy())

    assert got.shape == expected.shape
    if quantize == "none":
        np.testing.assert_allclose(got, expected, atol=1e-5)
        probability_atol = 1e-5
    else:
        np.testing.assert_allclose(got, expected, atol=INT8_EMBEDDING_ATOL)
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        assert ((got * expected).sum(1) / norms).min() > 0.99
        probability_atol = INT8_PROBABILITY_ATOL
    assert _probabilities(onnx, items) == pytest.approx(
        _probabilities(reference, items), abs=probability_atol
    )


def test_another_towers_export_does_not_pass_for_this_one(tmp_path: Path) -> None:
    # The agreement above would hold for no other weights: a different seed is far off.
    reference = _v1(tmp_path, runtime="torch", seed=104)
    other = _v1(tmp_path, runtime="onnx", quantize="none", seed=105)
    pixels = torch.cat([item.pixels for item in _items(reference, [4])])

    assert reference._net is not None
    with torch.inference_mode():
        expected = reference._net.embed(pixels).numpy()
    assert np.abs(_onnx(other).run(pixels.numpy()) - expected).max() > 0.1


@pytest.mark.parametrize(
    ("config", "runtime", "dtype"),
    [
        ({}, "onnxruntime", "int8"),
        ({"runtime": "onnx", "quantize": "none"}, "onnxruntime", "float32"),
        ({"runtime": "torch"}, "torch", "float32"),
    ],
)
def test_verdicts_name_the_runtime(
    tmp_path: Path, config: dict[str, Any], runtime: str, dtype: str
) -> None:
    detector = _v1(tmp_path, **config)
    [outcome] = detector.predict(_items(detector, [3]))

    details = _result(outcome).details
    assert details["backbone_runtime"] == runtime
    assert details["backbone_dtype"] == dtype
    assert details["weights"] == "dummy"


# --- the cache ---------------------------------------------------------------------------------


def test_second_load_reuses_the_cached_export(tmp_path: Path, exports: list[Path]) -> None:
    first = _v1(tmp_path, seed=102)
    items = _items(first, [4])
    before = _probabilities(first, items)
    assert _onnx(first).exported
    del first
    gc.collect()
    assert not siglip_lstm._SESSIONS  # nothing in memory: the next load reads the disk

    second = _v1(tmp_path, seed=102)

    assert not _onnx(second).exported
    assert len(exports) == 1
    assert [p.name for p in _cached(tmp_path)] == [_onnx(second).path.name]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    assert _probabilities(second, items) == before


def test_cache_is_keyed_by_weights_and_quantisation(tmp_path: Path, exports: list[Path]) -> None:
    checkpoint = tmp_path / "net.pth"
    seeded = _v1(tmp_path / "unused", runtime="torch", seed=108)
    assert seeded._net is not None
    torch.save(seeded._net.state_dict(), checkpoint)
    cache = tmp_path / "cache"

    paths = {
        _onnx(_v1(cache, seed=101)).path,
        _onnx(_v1(cache, seed=102)).path,
        _onnx(_v1(cache, seed=101, quantize="none")).path,
        _onnx(_v1(cache, weights=str(checkpoint))).path,
    }

    assert len(paths) == 4
    assert len(exports) == 4
    assert set(_cached(cache)) == paths


def test_v1_and_v3_share_one_session(tmp_path: Path, exports: list[Path]) -> None:
    v1 = _v1(tmp_path, seed=103)
    v3 = SiglipLSTMv3(SiglipLSTMv3Config(**{**TINY, "seed": 103}, onnx_cache=tmp_path))
    v3.setup("cpu")

    assert _onnx(v1) is _onnx(v3)
    assert len(exports) == 1


Damage = Callable[[Path], None]


def _change_a_weight(path: Path) -> None:
    # Still a model onnxruntime runs, with other weights: only its sha256 can tell.
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(path)
    largest = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    weights = numpy_helper.to_array(largest).copy()
    weights.flat[0] = weights.flat[0] // 2 + 1
    largest.CopyFrom(numpy_helper.from_array(weights, largest.name))
    onnx.save(model, path)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _garbage_with_its_sha256(path: Path) -> None:
    # Consistent with its sidecar, so that only onnxruntime can tell.
    import hashlib

    garbage = b"not an onnx model"
    path.write_bytes(garbage)
    path.with_suffix(".sha256").write_text(hashlib.sha256(garbage).hexdigest())


def _lose_the_sidecar(path: Path) -> None:
    path.with_suffix(".sha256").unlink()


@pytest.mark.parametrize("damage", [_change_a_weight, _garbage_with_its_sha256, _lose_the_sidecar])
def test_damaged_cache_is_exported_again(
    tmp_path: Path, exports: list[Path], damage: Damage, caplog: pytest.LogCaptureFixture
) -> None:
    first = _v1(tmp_path, seed=106)
    items = _items(first, [5])
    before = _probabilities(first, items)
    path = _onnx(first).path
    del first
    gc.collect()
    damage(path)

    again = _v1(tmp_path, seed=106)

    assert _onnx(again).exported
    assert len(exports) == 2
    assert _probabilities(again, items) == pytest.approx(before, abs=1e-6)
    # The repaired copy serves the next load.
    del again
    gc.collect()
    assert not _onnx(_v1(tmp_path, seed=106)).exported
    if damage is not _lose_the_sidecar:
        assert "exporting it again" in caplog.text


# --- the runtime setting -----------------------------------------------------------------------


def test_runtime_torch_runs_the_torch_tower_and_exports_nothing(
    tmp_path: Path, exports: list[Path]
) -> None:
    detector = _v1(tmp_path, runtime="torch")
    assert detector._onnx is None
    assert detector._net is not None
    frames_seen: list[int] = []
    detector._net.siglip_backbone.register_forward_hook(
        lambda _m, _args, kwargs, _out: frames_seen.append(len(kwargs["pixel_values"])),
        with_kwargs=True,
    )

    [outcome] = detector.predict(_items(detector, [3]))

    assert _result(outcome).details["backbone_runtime"] == "torch"
    assert frames_seen == [3]
    assert exports == []
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_onnx_keeps_the_whole_network_in_torch(tmp_path: Path) -> None:
    # A checkpoint saved from a detector's network still holds the tower, in the seed's layout.
    detector = _v1(tmp_path)
    assert detector._onnx is not None
    assert detector._net is not None
    expected = siglip_lstm.skeleton(detector.config).state_dict()
    assert detector._net.state_dict().keys() == expected.keys()


def test_on_torch_is_the_same_detector_on_torch(tmp_path: Path) -> None:
    onnx = _v1(tmp_path, seed=107)
    twin = onnx.on_torch()
    reference = _v1(tmp_path, runtime="torch", seed=107)
    items = _items(onnx, [4])

    assert twin._onnx is None
    assert twin._net is not None
    assert onnx._net is not None
    assert twin._net.siglip_backbone is onnx._net.siglip_backbone
    assert _probabilities(twin, items) == _probabilities(reference, items)


def test_runtime_onnx_refuses_cuda(tmp_path: Path) -> None:
    detector = SiglipLSTMv1(SiglipLSTMConfig(**TINY, onnx_cache=tmp_path, runtime="onnx"))
    with pytest.raises(DetectorError, match="CPU only"):
        detector.setup("cuda")


def test_runtime_auto_is_onnx_on_the_cpu_without_onnx_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _v1(tmp_path)._onnx is not None
    monkeypatch.setattr(onnx_runtime, "can_export", lambda: False)
    assert _v1(tmp_path, seed=109)._onnx is None
    with pytest.raises(DetectorError, match="needs the onnx package"):
        _v1(tmp_path, runtime="onnx")


@pytest.mark.parametrize(
    ("config", "message"), [({"runtime": "tvm"}, "runtime"), ({"quantize": "int4"}, "quantize")]
)
def test_bad_runtime_settings_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SiglipLSTMConfig(**{**TINY, **config})


def test_v1_and_v3_share_one_onnx_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = _v1(tmp_path, num_frames=8, seed=105)
    v3 = SiglipLSTMv3(
        SiglipLSTMv3Config(**{**TINY, "seed": 105}, onnx_cache=tmp_path, num_frames=8)
    )
    v3.setup("cpu")
    frames_seen: list[int] = []
    run = OnnxModule.run

    def counted(self: OnnxModule, inputs: np.ndarray) -> np.ndarray:
        frames_seen.append(len(inputs))
        return run(self, inputs)

    monkeypatch.setattr(OnnxModule, "run", counted)
    pipeline = Pipeline(
        {KEY_V1: v1, KEY_V3: v3}, DecodeLimits(100_000_000, 600, 3840 * 2160, 50_000), 320
    )
    videos = [make_video(tmp_path / f"v{i}.mp4", seconds=1.0 + i, fps=10) for i in range(2)]
    prepared = [pipeline.prepare(v, [KEY_V1, KEY_V3]) for v in videos]

    predicted = pipeline.predict(prepared)

    assert frames_seen == [sum(len(p.inputs[KEY_V1].pixels) for p in prepared)]
    for p in predicted:
        assert _result(p.outcomes[KEY_V3]).fake_probability == pytest.approx(
            _result(p.outcomes[KEY_V1]).fake_probability, abs=1e-6
        )
