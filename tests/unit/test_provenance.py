"""c2pa-provenance on videos whose content credentials the tests sign themselves, read through
the same pipeline (one decode, then the detector) as the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from detectors import registry
from detectors.base import DetectorResult
from detectors.frames import DecodeLimits
from detectors.provenance import ProvenanceDetector, may_carry_manifest
from detectors.weights import WeightsError
from processor.pipeline import Pipeline
from tests.credentials import (
    AI,
    AI_COMPOSITE,
    CAPTURE,
    Credentials,
    action,
    make_credentials,
    sign_video,
    sign_with_bloated_assertion,
)
from tests.media import SHARED_VIDEOS, make_video

KEY = "c2pa-provenance"
LIMITS = DecodeLimits(1 << 30, 3600, 3840 * 2160, 100_000)


@pytest.fixture(scope="module")
def creds() -> Credentials:
    return make_credentials()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1.0, fps=10)


def judge(path: Path, **config: Any) -> DetectorResult:
    detector = registry.build(KEY, config)
    detector.setup("cpu")
    pipeline = Pipeline({KEY: detector}, LIMITS, 256)
    [predicted] = pipeline.predict([pipeline.prepare(path, [KEY])])
    result = predicted.outcomes[KEY]
    assert isinstance(result, DetectorResult)
    return result


def test_no_manifest_abstains(clip: Path) -> None:
    result = judge(clip)
    assert (result.label.value, result.fake_probability) == ("ABSTAIN", None)
    assert result.details["reason"] == "no_manifest"


def test_only_a_file_that_cannot_carry_a_manifest_skips_the_reader(
    clip: Path, creds: Credentials, tmp_path: Path
) -> None:
    assert not may_carry_manifest(clip)
    assert judge(clip).details["message"] == "no content credentials in the file (no C2PA box)"
    signed = sign_video(clip, tmp_path / "signed.mp4", creds, [action("c2pa.created", AI)])
    assert may_carry_manifest(signed)
    data = clip.read_bytes()
    cases = {
        "a uuid box": data + (24).to_bytes(4, "big") + b"uuid" + bytes(16),
        "too many boxes": data + b"\x00\x00\x00\x08free" * 5000,
        "a box past the end": data + (64).to_bytes(4, "big") + b"free",
        "a box shorter than its header": data + (4).to_bytes(4, "big") + b"free",
        "no ftyp first": b"\x00\x00\x00\x08free" + data,
        "empty": b"",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(content)
        assert may_carry_manifest(path), name
    # A 64-bit box size and a last box that runs to the end are read as BMFF writes them.
    large = data + (1).to_bytes(4, "big") + b"free" + (24).to_bytes(8, "big") + bytes(8)
    to_end = data + (0).to_bytes(4, "big") + b"mdat" + bytes(100)
    for name, content in (("largesize", large), ("to the end", to_end)):
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(content)
        assert not may_carry_manifest(path), name
    assert may_carry_manifest(tmp_path / "missing.mp4")


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason="../shared/videos is not present")
def test_real_clips_carry_no_manifest() -> None:
    clips = sorted(SHARED_VIDEOS.glob("*/*.mp4"))[:5]
    assert clips
    for path in clips:
        assert judge(path).details["reason"] == "no_manifest", path.name


def test_containers_without_a_c2pa_embedding_are_not_checked(tmp_path: Path) -> None:
    webm = make_video(tmp_path / "clip.webm", seconds=0.5, fps=10, codec="vp9", streamed=True)
    result = judge(webm)
    assert result.label.value == "ABSTAIN"
    assert result.details["reason"] == "unsupported_format"
    assert "webm" in result.details["message"]


def test_signed_generative_ai_declaration_is_a_decisive_fake(
    clip: Path, creds: Credentials, tmp_path: Path
) -> None:
    signed = sign_video(clip, tmp_path / "ai.mp4", creds, [action("c2pa.created", AI)])
    result = judge(signed)
    assert (result.label.value, result.fake_probability) == ("FAKE", 1.0)
    assert result.details["reason"] == "declared_generative_ai"
    assert result.details["decisive"] is True
    assert "test signer (valid)" in result.details["message"]
    assert "trainedAlgorithmicMedia" in result.details["message"]
    provenance = result.details["provenance"]
    assert provenance["state"] == "valid"
    assert provenance["signer"]["common_name"] == "test signer"
    assert provenance["actions"][0]["digital_source_type"] == AI


def test_capture_history_is_reported_not_judged(
    clip: Path, creds: Credentials, tmp_path: Path
) -> None:
    signed = sign_video(
        clip,
        tmp_path / "camera.mp4",
        creds,
        [action("c2pa.created", CAPTURE), action("c2pa.color_adjustments")],
    )
    result = judge(signed)
    assert (result.label.value, result.fake_probability) == ("ABSTAIN", None)
    assert result.details["reason"] == "no_generative_ai_declared"
    actions = [a["action"] for a in result.details["provenance"]["actions"]]
    assert actions == ["c2pa.created", "c2pa.color_adjustments"]


def test_generative_ancestry_in_an_ingredient_counts(
    clip: Path, creds: Credentials, tmp_path: Path
) -> None:
    generated = sign_video(clip, tmp_path / "gen.mp4", creds, [action("c2pa.created", AI)])
    edited = sign_video(
        clip,
        tmp_path / "edit.mp4",
        creds,
        [action("c2pa.cropped")],
        generated,
    )
    result = judge(edited)
    assert result.label.value == "FAKE"
    assert result.details["provenance"]["manifests"] == 2

    composite = sign_video(
        clip, tmp_path / "comp.mp4", creds, [action("c2pa.created", AI_COMPOSITE)]
    )
    assert judge(composite).details["reason"] == "declared_generative_ai"
    # The list of source types that count is the operator's to narrow.
    narrow = judge(composite, generative_source_types=["trainedAlgorithmicMedia"])
    assert narrow.details["reason"] == "no_generative_ai_declared"


def test_content_changed_after_signing_is_reported_invalid(
    clip: Path, creds: Credentials, tmp_path: Path
) -> None:
    signed = sign_video(clip, tmp_path / "ai.mp4", creds, [action("c2pa.created", AI)])
    data = bytearray(signed.read_bytes())
    # One byte of the picture data, well inside mdat: the file still decodes.
    data[data.index(b"mdat") + 64] ^= 0x01
    tampered = tmp_path / "tampered.mp4"
    tampered.write_bytes(data)
    result = judge(tampered)
    assert (result.label.value, result.fake_probability) == ("ABSTAIN", None)
    assert result.details["reason"] == "invalid_manifest"
    assert result.details["provenance"]["state"] == "invalid"
    assert "assertion.bmffHash.mismatch" in result.details["provenance"]["failures"]
    assert "assertion.bmffHash.mismatch" in result.details["message"]


def test_trust_anchors(clip: Path, creds: Credentials, tmp_path: Path) -> None:
    signed = sign_video(clip, tmp_path / "ai.mp4", creds, [action("c2pa.created", AI)])
    ours = tmp_path / "ours.pem"
    ours.write_bytes(creds.root_pem)
    theirs = tmp_path / "theirs.pem"
    theirs.write_bytes(make_credentials(org="Someone else").root_pem)

    trusted = judge(signed, trust_anchors=str(ours), require_trusted=True)
    assert trusted.label.value == "FAKE"
    assert trusted.details["provenance"]["state"] == "trusted"

    untrusted = judge(signed, trust_anchors=str(theirs), require_trusted=True)
    assert untrusted.label.value == "ABSTAIN"
    assert untrusted.details["reason"] == "untrusted_signer"
    # Without require_trusted a valid signature is enough, trusted or not.
    assert judge(signed, trust_anchors=str(theirs)).label.value == "FAKE"


def test_the_trust_list_and_rules_are_part_of_the_weights_id(
    creds: Credentials, tmp_path: Path
) -> None:
    def weights_id(**config: Any) -> str:
        detector = registry.build(KEY, config)
        detector.setup("cpu")
        return detector.weights_id

    pem = tmp_path / "anchors.pem"
    pem.write_bytes(creds.root_pem)
    plain = weights_id()
    assert plain.startswith("c2pa-rs-")
    assert "+trust-none+rules-" in plain
    assert weights_id(trust_anchors=str(pem)) != plain
    # So do the settings that change a verdict: a stored one is not reused across them.
    assert weights_id(generative_source_types=["trainedAlgorithmicMedia"]) != plain


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="require_trusted needs trust_anchors"):
        registry.build(KEY, {"require_trusted": True})
    with pytest.raises(ValidationError, match="weights"):
        registry.build(KEY, {"weights": "dummy"})  # no weights to choose
    missing = registry.build(KEY, {"trust_anchors": str(tmp_path / "none.pem")})
    with pytest.raises(WeightsError, match="cannot read trust_anchors"):
        missing.setup("cpu")
    detector = registry.build(KEY, {})
    assert isinstance(detector, ProvenanceDetector)
    with pytest.raises(WeightsError, match="has no weights"):
        detector.check_checkpoint(tmp_path / "x.pt")


def test_a_broken_manifest_does_not_fail_the_video(clip: Path, tmp_path: Path) -> None:
    """A file whose C2PA box holds garbage still decodes; the detector abstains with the
    reader's message instead of failing the job."""
    data = clip.read_bytes()
    # A top-level 'uuid' box with C2PA's UUID and a truncated JUMBF payload after it.
    c2pa_uuid = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")
    payload = c2pa_uuid + b"\x00\x00\x00\x00" + b"jumb" * 8
    box = (8 + len(payload)).to_bytes(4, "big") + b"uuid" + payload
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data + box)  # at the end: no sample offset moves
    result = judge(broken)
    assert result.label.value == "ABSTAIN"
    assert result.details["reason"] == "unreadable_manifest"
    assert result.details["message"]


def test_a_manifest_that_would_exhaust_memory_fails_alone(
    clip: Path, creds: Credentials, tmp_path: Path
) -> None:
    """Reading this manifest needs a few GB (c2pa-rs blows its CBOR up ~140 times): the child
    process that reads it meets its address-space limit and dies, the detector abstains."""
    hostile = sign_with_bloated_assertion(clip, tmp_path / "bloated.mp4", creds, 4_000_000)
    result = judge(hostile, max_memory_mb=256)
    assert (result.label.value, result.details["reason"]) == ("ABSTAIN", "check_failed")
    assert "memory limit 256 MB" in result.details["message"]


def test_a_file_that_would_take_minutes_to_read_fails_alone(clip: Path, tmp_path: Path) -> None:
    """c2pa-rs takes time quadratic in the number of boxes; the check has a deadline."""
    slow = tmp_path / "boxes.mp4"
    slow.write_bytes(clip.read_bytes() + b"\x00\x00\x00\x08free" * 200_000)
    result = judge(slow, timeout_s=1)
    assert (result.label.value, result.details["reason"]) == ("ABSTAIN", "check_failed")
    assert "took longer than 1 s" in result.details["message"]
