"""siglip-lstm-v1/-v3: seed-compatible checkpoints (whole file, or backbone folder + heads),
batched inference over videos of different lengths, isolation of bad inputs, the smoothed frame
view, the shared backbone, the registry, and a full pipeline run beside color-cues."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from detectors import registry, siglip_lstm
from detectors.base import DetectorResult, FrameScore, Label, SampledFrames, VideoInfo
from detectors.color_cues import KEY as COLOR_CUES
from detectors.color_cues import ColorCuesConfig, ColorCuesDetector
from detectors.errors import DetectorError
from detectors.frames import DecodeLimits
from detectors.siglip_lstm import (
    KEY_V1,
    KEY_V3,
    SiglipInput,
    SiglipLSTMConfig,
    SiglipLSTMv1,
    SiglipLSTMv3,
    SiglipLSTMv3Config,
    split_weights_id,
)
from detectors.siglip_net import SiglipLSTMNet
from detectors.temporal import rolling_mean
from detectors.weights import WeightsError, WeightsUnreadable, sha256_file
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
    # The older service's exact numbers: its PyTorch path (ONNX Runtime's agreement with it is
    # tests/unit/test_siglip_onnx.py's).
    "runtime": "torch",
}
INFO = VideoInfo("mp4", "h264", 64, 48, 25.0, 2.0)


class SeedSiglipLSTM(nn.Module):
    """The seed project's network, written out independently to produce its checkpoints."""

    def __init__(self, lstm_hidden: int = 16) -> None:
        super().__init__()
        config = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        # transformers 5: SiglipVisionModel is the tower the seed took as ``.vision_model``.
        self.siglip_backbone = SiglipVisionModel(config)
        self.lstm = nn.LSTM(32, lstm_hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.video_classifier = nn.Linear(2 * lstm_hidden, 1)
        self.image_classifier = nn.Linear(32, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(videos, frames, 3, H, W) -> video logits (videos,), frame logits (videos, frames)."""
        videos, frames = pixels.shape[:2]
        out = self.siglip_backbone(pixel_values=pixels.flatten(0, 1))
        features = out.pooler_output.view(videos, frames, -1)
        _, (h_n, _) = self.lstm(features)
        video = self.video_classifier(torch.cat([h_n[-2], h_n[-1]], dim=1)).squeeze(-1)
        return video, self.image_classifier(features).squeeze(-1)


def _seed_model(seed: int = 123) -> SeedSiglipLSTM:
    torch.manual_seed(seed)
    return SeedSiglipLSTM().eval()


def _v1(**config: Any) -> SiglipLSTMv1:
    detector = SiglipLSTMv1(SiglipLSTMConfig(**{**TINY, **config}))
    detector.setup("cpu")
    return detector


def _v3(**config: Any) -> SiglipLSTMv3:
    detector = SiglipLSTMv3(SiglipLSTMv3Config(**{**TINY, **config}))
    detector.setup("cpu")
    return detector


def _result(outcome: DetectorResult | DetectorError) -> DetectorResult:
    assert isinstance(outcome, DetectorResult), outcome
    return outcome


def _frames(count: int, seed: int) -> SampledFrames:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)]
    return SampledFrames(INFO, images, [0.2 * i for i in range(count)])


def _prepared(detector: SiglipLSTMv1 | SiglipLSTMv3, count: int, seed: int) -> SiglipInput:
    return detector.prepare(_frames(count, seed))


def _probability(outcome: DetectorResult | DetectorError) -> float:
    probability = _result(outcome).fake_probability
    assert probability is not None
    return probability


@pytest.fixture(scope="module")
def detector() -> SiglipLSTMv1:
    return _v1(max_frames_per_batch=4)


# --- preprocessing -----------------------------------------------------------------------------


def test_prepare_resizes_and_normalises(detector: SiglipLSTMv1) -> None:
    white = np.full((48, 64, 3), 255, np.uint8)
    black = np.zeros((48, 64, 3), np.uint8)
    grey = np.full((48, 64, 3), 51, np.uint8)

    prepared = detector.prepare(SampledFrames(INFO, [white, black, grey], [0.0, 0.5, 1.0]))

    assert prepared.pixels.shape == (3, 3, 32, 32)
    assert prepared.pixels.dtype == torch.float32
    assert prepared.timestamps == (0.0, 0.5, 1.0)
    torch.testing.assert_close(prepared.pixels[0], torch.ones(3, 32, 32))
    torch.testing.assert_close(prepared.pixels[1], -torch.ones(3, 32, 32))
    torch.testing.assert_close(prepared.pixels[2], torch.full((3, 32, 32), 51 / 255 * 2 - 1))


def test_prepare_keeps_channels_apart(detector: SiglipLSTMv1) -> None:
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 255

    pixels = detector.prepare(SampledFrames(INFO, [red], [0.0])).pixels

    assert pixels[0, 0].min() == 1.0
    assert pixels[0, 1].max() == -1.0
    assert pixels[0, 2].max() == -1.0


def test_prepare_without_frames_is_an_error(detector: SiglipLSTMv1) -> None:
    with pytest.raises(DetectorError, match="no frames"):
        detector.prepare(SampledFrames(INFO, [], []))


# --- weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True])
def test_seed_checkpoint_round_trip(tmp_path: Path, wrapped: bool) -> None:
    seed_model = _seed_model()
    state = seed_model.state_dict()
    assert {k.split(".")[0] for k in state} == {
        "siglip_backbone",
        "lstm",
        "video_classifier",
        "image_classifier",
    }
    assert "siglip_backbone.encoder.layers.1.mlp.fc2.weight" in state
    assert "siglip_backbone.head.attention.in_proj_weight" in state
    path = tmp_path / "siglip_lstm.pth"
    torch.save({"model_state_dict": state, "epoch": 3} if wrapped else state, path)

    detector = _v1(weights=str(path))
    prepared = _prepared(detector, 6, 0)
    result = _result(detector.predict([prepared])[0])

    assert detector.weights_id == sha256_file(path)
    assert result.details["weights"] == sha256_file(path)
    with torch.no_grad():
        video, frames = seed_model(prepared.pixels[None])
    assert result.fake_probability == pytest.approx(torch.sigmoid(video).item(), abs=1e-5)
    assert [s.fake_probability for s in result.frame_scores] == pytest.approx(
        torch.sigmoid(frames[0]).tolist(), abs=1e-5
    )
    assert [s.timestamp for s in result.frame_scores] == list(prepared.timestamps)


def test_mismatched_checkpoint_is_refused_naming_each_key(tmp_path: Path) -> None:
    state = _seed_model().state_dict()
    del state["video_classifier.bias"]
    state["siglip_backbone.extra.weight"] = torch.zeros(3)
    state["image_classifier.weight"] = torch.zeros(1, 33)
    path = tmp_path / "bad.pth"
    torch.save(state, path)

    with pytest.raises(WeightsError) as exc:
        _v1(weights=str(path))

    message = exc.value.message
    assert "missing keys: video_classifier.bias" in message
    assert "unexpected keys: siglip_backbone.extra.weight" in message
    assert "image_classifier.weight (1, 33) (expected (1, 32))" in message


def test_checkpoint_of_another_lstm_size_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "wide.pth"
    torch.save(SeedSiglipLSTM(lstm_hidden=24).state_dict(), path)

    with pytest.raises(WeightsError, match=r"lstm.bias_hh_l0 \(96,\) \(expected \(64,\)\)"):
        _v1(weights=str(path))


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnreadable):
        _v1(weights=str(tmp_path / "missing.pth"))


def _split_files(tmp_path: Path, seed_model: SeedSiglipLSTM) -> tuple[Path, Path]:
    folder = tmp_path / "siglip"
    seed_model.siglip_backbone.save_pretrained(folder)
    heads = {k: v for k, v in seed_model.state_dict().items() if not k.startswith("siglip_")}
    head_path = tmp_path / "heads.pth"
    torch.save(heads, head_path)
    return folder, head_path


def test_backbone_folder_plus_head_checkpoint(tmp_path: Path) -> None:
    seed_model = _seed_model()
    folder, head_path = _split_files(tmp_path, seed_model)

    detector = _v1(backbone=str(folder), weights=str(head_path))
    prepared = _prepared(detector, 5, 1)
    result = _result(detector.predict([prepared])[0])

    expected_id = split_weights_id(
        sha256_file(head_path), {"model.safetensors": sha256_file(folder / "model.safetensors")}
    )
    assert detector.weights_id == expected_id
    assert expected_id not in (sha256_file(head_path), "dummy")
    with torch.no_grad():
        video, _ = seed_model(prepared.pixels[None])
    assert result.fake_probability == pytest.approx(torch.sigmoid(video).item(), abs=1e-5)


def test_split_weights_id_depends_on_both_parts() -> None:
    base = split_weights_id("a" * 64, {"model.safetensors": "b" * 64})
    assert split_weights_id("c" * 64, {"model.safetensors": "b" * 64}) != base
    assert split_weights_id("a" * 64, {"model.safetensors": "d" * 64}) != base
    assert split_weights_id("a" * 64, {"model.safetensors": "b" * 64}) == base


def test_whole_checkpoint_is_refused_as_a_head_checkpoint(tmp_path: Path) -> None:
    seed_model = _seed_model()
    folder, _ = _split_files(tmp_path, seed_model)
    whole = tmp_path / "whole.pth"
    torch.save(seed_model.state_dict(), whole)

    with pytest.raises(WeightsError, match=r"unexpected keys: siglip_backbone\."):
        _v1(backbone=str(folder), weights=str(whole))


def test_backbone_folder_of_another_architecture_is_refused(tmp_path: Path) -> None:
    folder, head_path = _split_files(tmp_path, _seed_model())

    # The heads fit (same hidden size); the tower in the folder has 2 layers, not 3.
    with pytest.raises(WeightsError, match="num_hidden_layers 2 \\(configured 3\\)"):
        _v1(backbone=str(folder), weights=str(head_path), num_hidden_layers=3)


def test_backbone_folder_must_exist_and_hold_safetensors(tmp_path: Path) -> None:
    _, head_path = _split_files(tmp_path, _seed_model())
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(WeightsUnreadable, match="not found"):
        _v1(backbone=str(tmp_path / "nowhere"), weights=str(head_path))
    with pytest.raises(WeightsUnreadable, match="safetensors"):
        _v1(backbone=str(empty), weights=str(head_path))


def test_dummy_weights_are_deterministic_for_a_seed() -> None:
    state = torch.random.get_rng_state()
    a, b, c = _v1(seed=7), _v1(seed=7), _v1(seed=8)

    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.weights_id == "dummy"
    prepared = _prepared(a, 4, 0)
    pa, pb, pc = (_result(d.predict([prepared])[0]) for d in (a, b, c))
    assert pa.details["weights"] == "dummy"
    assert pa.fake_probability == pb.fake_probability
    assert pa.fake_probability != pc.fake_probability


# --- batching ----------------------------------------------------------------------------------


def test_batched_predict_equals_one_by_one(detector: SiglipLSTMv1) -> None:
    # Chunks of 4 frames cut across videos of 3, 7, 1, 5 and 9 frames.
    items = [_prepared(detector, n, seed) for seed, n in enumerate([3, 7, 1, 5, 9])]

    batched = [_result(r) for r in detector.predict(items)]
    single = [_result(detector.predict([item])[0]) for item in items]

    for a, b, item in zip(batched, single, items, strict=True):
        assert a.fake_probability == pytest.approx(b.fake_probability, abs=1e-5)
        assert len(a.frame_scores) == len(item.timestamps)
        assert [s.fake_probability for s in a.frame_scores] == pytest.approx(
            [s.fake_probability for s in b.frame_scores], abs=1e-5
        )
    # Different videos get different scores: the split back per video is not a mix-up.
    assert len({round(_probability(r), 6) for r in batched}) == len(items)


def test_chunk_size_does_not_change_scores() -> None:
    items = [_prepared(_v1(), n, seed) for seed, n in enumerate([3, 7, 2])]
    small = _v1(max_frames_per_batch=1).predict(items)
    large = _v1(max_frames_per_batch=256).predict(items)
    for a, b in zip(small, large, strict=True):
        assert _probability(a) == pytest.approx(_probability(b), abs=1e-5)


def test_poisoned_items_fail_alone(detector: SiglipLSTMv1) -> None:
    good = _prepared(detector, 4, 0)
    wrong_size = replace(good, pixels=torch.zeros(4, 3, 16, 16))
    wrong_dtype = replace(good, pixels=good.pixels.double())
    not_finite = replace(good, pixels=torch.full_like(good.pixels, float("nan")))
    wrong_times = replace(good, timestamps=(0.0,))
    empty = replace(good, pixels=torch.zeros(0, 3, 32, 32), timestamps=())
    batch = [good, wrong_size, wrong_dtype, "not prepared", not_finite, wrong_times, empty, good]

    results = detector.predict(batch)

    assert len(results) == len(batch)
    for bad in results[1:7]:
        assert isinstance(bad, DetectorError)
    assert "(4, 3, 16, 16)" in str(results[1])
    assert "float32" in str(results[2])
    alone = _probability(detector.predict([good])[0])
    assert _probability(results[0]) == pytest.approx(alone, abs=1e-5)
    assert _probability(results[7]) == pytest.approx(alone, abs=1e-5)


def test_threshold_decides_the_label() -> None:
    prepared = _prepared(_v1(), 4, 0)
    assert _result(_v1(threshold=0.0).predict([prepared])[0]).label is Label.FAKE
    assert _result(_v1(threshold=1.0).predict([prepared])[0]).label is Label.REAL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_matches_cpu(dtype: str) -> None:
    cpu = _v1()
    cuda = SiglipLSTMv1(SiglipLSTMConfig(**TINY, dtype=dtype, max_frames_per_batch=4))
    cuda.setup("cuda")
    items = [_prepared(cpu, n, seed) for seed, n in enumerate([3, 7, 1])]
    tolerance = 1e-4 if dtype == "float32" else 5e-2
    for a, b in zip(cpu.predict(items), cuda.predict(items), strict=True):
        assert _probability(a) == pytest.approx(_probability(b), abs=tolerance)
        assert _result(b).details["backbone_dtype"] == dtype


# --- v3 and the shared backbone -----------------------------------------------------------------


def test_v3_smooths_frame_scores_over_v1s_network() -> None:
    v1, v3 = _v1(seed=3), _v3(seed=3, frame_window=3)
    prepared = _prepared(v1, 8, 0)

    r1 = _result(v1.predict([prepared])[0])
    r3 = _result(v3.predict([prepared])[0])

    raw = [s.fake_probability for s in r1.frame_scores]
    assert r3.fake_probability == pytest.approx(r1.fake_probability, abs=1e-6)
    assert r3.details["frame_scores_raw"] == pytest.approx(raw, abs=1e-6)
    smoothed = rolling_mean(raw, 3)
    assert r3.details["frame_scores_smoothed"] == pytest.approx(smoothed, abs=1e-6)
    assert [s.fake_probability for s in r3.frame_scores] == pytest.approx(smoothed, abs=1e-6)
    assert r3.frame_scores[2].fake_probability == pytest.approx(sum(raw[:3]) / 3, abs=1e-6)
    assert [s.timestamp for s in r3.frame_scores] == list(prepared.timestamps)
    temporal = r3.details["temporal"]
    assert temporal["frames"] == 8
    assert temporal["window"] == 3
    assert "frame_scores_raw" not in r1.details


def _net(detector: SiglipLSTMv1 | SiglipLSTMv3) -> SiglipLSTMNet:
    assert detector._net is not None
    return detector._net


def test_v1_and_v3_share_one_backbone(tmp_path: Path) -> None:
    a, b, other = _net(_v1(seed=5)), _net(_v3(seed=5)), _net(_v1(seed=6))

    assert a.siglip_backbone is b.siglip_backbone
    assert a.siglip_backbone is not other.siglip_backbone
    # The heads are each detector's own.
    assert a.lstm is not b.lstm

    path = tmp_path / "seed.pth"
    torch.save(_seed_model().state_dict(), path)
    c, d = _net(_v1(weights=str(path))), _net(_v3(weights=str(path)))
    assert c.siglip_backbone is d.siglip_backbone
    assert c.siglip_backbone is not a.siglip_backbone


def test_unused_backbones_are_released() -> None:
    detector = _v1(seed=11)
    key = next(k for k in siglip_lstm._BACKBONES if k[0] == ("dummy", 11))

    del detector
    gc.collect()

    assert key not in siglip_lstm._BACKBONES


# --- config and registry -----------------------------------------------------------------------


def test_config_defaults_are_siglip_base() -> None:
    config = SiglipLSTMv3Config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        768,
        12,
        12,
    )
    assert (config.image_size, config.patch_size, config.intermediate_size) == (224, 16, 3072)
    assert (config.lstm_hidden, config.num_frames, config.frame_window) == (512, 32, 10)
    assert config.dtype == "bfloat16"
    assert config.max_frames_per_batch == 256


def test_full_size_checkpoint_keys_match_the_seed_layout(tmp_path: Path) -> None:
    expected = siglip_lstm.skeleton(SiglipLSTMConfig()).state_dict()
    assert expected["lstm.weight_ih_l0"].shape == (2048, 768)
    assert expected["lstm.weight_hh_l1_reverse"].shape == (2048, 512)
    assert expected["video_classifier.weight"].shape == (1, 1024)
    assert expected["image_classifier.weight"].shape == (1, 768)
    assert expected["siglip_backbone.embeddings.patch_embedding.weight"].shape == (768, 3, 16, 16)
    assert "siglip_backbone.encoder.layers.11.self_attn.q_proj.weight" in expected
    assert expected["siglip_backbone.head.probe"].shape == (1, 1, 768)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_size": 33}, "multiple of num_attention_heads"),
        ({"image_size": 30}, "multiple of patch_size"),
        ({"hidden_act": "wiggle"}, "wiggle"),
        ({"backbone": "/models/siglip"}, "head checkpoint"),
        ({"frame_windw": 3}, "frame_windw"),
        ({"dtype": "float64"}, "dtype"),
    ],
)
def test_bad_config_is_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SiglipLSTMv3Config(**{**TINY, **config})


def test_v1_has_no_frame_window() -> None:
    with pytest.raises(ValidationError, match="frame_window"):
        SiglipLSTMConfig(frame_window=3)  # type: ignore[call-arg]


def test_registry_builds_both_keys() -> None:
    available = registry.available()
    assert available[KEY_V1] is SiglipLSTMv1
    assert available[KEY_V3] is SiglipLSTMv3

    built = registry.build(KEY_V3, {**TINY, "num_frames": 12, "frame_window": 4})

    assert isinstance(built, SiglipLSTMv3)
    assert built.num_frames == 12


def test_registry_checks_a_checkpoint_without_setup(tmp_path: Path) -> None:
    path = tmp_path / "seed.pth"
    torch.save({"model_state_dict": _seed_model().state_dict()}, path)

    assert registry.check_checkpoint(KEY_V1, TINY, path) == sha256_file(path)
    with pytest.raises(WeightsError, match="expected \\(1, 768\\)"):
        registry.check_checkpoint(KEY_V1, {}, path)


def test_registry_checks_a_head_checkpoint_against_the_heads(tmp_path: Path) -> None:
    folder, head_path = _split_files(tmp_path, _seed_model())
    config = {**TINY, "backbone": str(folder), "weights": str(head_path)}

    assert registry.check_checkpoint(KEY_V3, config, head_path) == sha256_file(head_path)
    whole = tmp_path / "whole.pth"
    torch.save(_seed_model().state_dict(), whole)
    with pytest.raises(WeightsError, match="unexpected keys"):
        registry.check_checkpoint(KEY_V3, config, whole)


def test_registry_checks_color_cues_checkpoints_too(tmp_path: Path) -> None:
    path = tmp_path / "cc.pth"
    torch.save({"lstm.weight_ih_l0": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match=r"fc1\.weight") as err:
        registry.check_checkpoint(COLOR_CUES, {}, path)
    assert "lstm.weight_ih_l0" in str(err.value)


# --- the pipeline ------------------------------------------------------------------------------


def test_pipeline_runs_siglip_beside_color_cues(tmp_path: Path) -> None:
    siglip = SiglipLSTMv1(SiglipLSTMConfig(**TINY, num_frames=8))
    colour = ColorCuesDetector(ColorCuesConfig(num_frames=16))
    siglip.setup("cpu")
    colour.setup("cpu")
    pipeline = Pipeline(
        {KEY_V1: siglip, COLOR_CUES: colour},
        DecodeLimits(100_000_000, 600, 3840 * 2160, 50_000),
        max_side=320,
    )
    path = make_video(tmp_path / "face.mp4", seconds=2.0, fps=15, face=True)

    prepared = pipeline.prepare(path, [KEY_V1, COLOR_CUES])
    [predicted] = pipeline.predict([prepared])

    result = _result(predicted.outcomes[KEY_V1])
    assert result.label in (Label.REAL, Label.FAKE)
    assert len(result.frame_scores) == 8
    assert all(isinstance(s, FrameScore) for s in result.frame_scores)
    assert result.details["weights"] == "dummy"
    colour_result = _result(predicted.outcomes[COLOR_CUES])
    assert len(colour_result.frame_scores) > 8
    assert set(predicted.elapsed_s) == {KEY_V1, COLOR_CUES}


def test_v1_and_v3_share_one_backbone_pass(tmp_path: Path) -> None:
    v1 = SiglipLSTMv1(SiglipLSTMConfig(**TINY, num_frames=8, seed=5))
    v3 = SiglipLSTMv3(SiglipLSTMv3Config(**TINY, num_frames=8, seed=5))
    alone = SiglipLSTMv3(SiglipLSTMv3Config(**TINY, num_frames=8, seed=5))
    for det in (v1, v3):
        det.setup("cpu")
    backbone = v1._net.siglip_backbone  # type: ignore[union-attr]
    assert backbone is v3._net.siglip_backbone  # type: ignore[union-attr]
    frames_seen: list[int] = []
    backbone.register_forward_hook(
        lambda _m, args, kwargs, _out: frames_seen.append(
            len(kwargs["pixel_values"] if "pixel_values" in kwargs else args[0])
        ),
        with_kwargs=True,
    )
    pipeline = Pipeline(
        {KEY_V1: v1, KEY_V3: v3}, DecodeLimits(100_000_000, 600, 3840 * 2160, 50_000), 320
    )
    videos = [
        make_video(tmp_path / f"v{i}.mp4", seconds=1.0 + i, fps=10, face=False) for i in range(2)
    ]
    prepared = [pipeline.prepare(v, [KEY_V1, KEY_V3]) for v in videos]
    predicted = pipeline.predict(prepared)
    # One backbone pass over both videos' frames, not one per detector.
    assert frames_seen == [sum(len(p.inputs[KEY_V1].pixels) for p in prepared)]
    # Sharing changes nothing: v3 alone (its own memo-less backbone) gives the same scores.
    alone.setup("cpu")
    siglip_lstm._EMBEDDINGS.clear()
    [solo] = Pipeline({KEY_V3: alone}, pipeline.limits, 320).predict([prepared[0]])
    assert _result(solo.outcomes[KEY_V3]).fake_probability == pytest.approx(
        _result(predicted[0].outcomes[KEY_V3]).fake_probability, abs=1e-6
    )
