"""``c2pa-provenance``: what the video's own content credentials (C2PA manifests) say.

A C2PA manifest is a signed record, embedded in the file, of how the content was made and
edited. It proves nothing about a video without one (most have none), and a signature proves
who signed, not that they told the truth. So the signal is narrow on purpose:

- no manifest: ABSTAIN (``no_manifest``; ``unsupported_format`` for containers C2PA cannot
  embed a manifest in, such as WebM);
- a manifest whose signature or content hash does not verify: ABSTAIN (``invalid_manifest``),
  with the validator's failure codes, so a tampered file is reported as such;
- a valid manifest that declares generative-AI creation (an action whose digital source type is
  ``trainedAlgorithmicMedia`` or a composite with it, anywhere in the manifest store, ingredients
  included): FAKE with probability 1 and ``decisive: true``, which makes the job's overall
  verdict FAKE whatever the fusion rule (the maker said so, and signed it);
- any other valid manifest: ABSTAIN (``no_generative_ai_declared``), with the capture and edit
  history reported as provenance. A camera's "captured" claim is not treated as evidence of
  REAL: a re-recorded screen is captured too.

Signatures are checked by the C2PA reference implementation (c2pa-rs, through c2pa-python), in
a child process with a deadline and an address-space limit (``detectors.c2pa_probe``: hostile
manifests can make the reader use gigabytes or minutes); a check that fails so abstains with
``check_failed``, which is never reused from the result cache. Nothing is fetched over the
network (no remote manifests, no OCSP). Most videos carry no manifest, and starting the child
costs an interpreter's start-up, so an MP4 or MOV whose top-level boxes (read here, headers only)
include no ``uuid`` box, where C2PA embeds its manifest (and XMP its pointer to a remote one),
is answered ``no_manifest`` without it; every other file goes to the reader.
Without ``trust_anchors`` a signer is "valid" but never "trusted"; with them, chains that end at
one of those certificates are "trusted", and ``require_trusted`` limits FAKE to those.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import c2pa
from pydantic import Field, field_validator

from detectors.base import (
    Detector,
    DetectorConfig,
    DetectorResult,
    Label,
    SampledFrames,
    describe,
)
from detectors.errors import DetectorError
from detectors.weights import WeightsError

KEY = "c2pa-provenance"

# IPTC digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/) that mean the
# content was made by a generative model, wholly or in part.
GENERATIVE_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")

# The validator lists an untrusted signer among its failures even when the manifest is valid;
# whether it matters is this detector's decision (``require_trusted``), not a defect of the file.
_UNTRUSTED = "signingCredential.untrusted"

# Top-level boxes read before a file is handed to the reader anyway: the reader's own time
# grows with the count, and this look must stay cheap on a hostile file.
_MAX_BOXES = 4096


def may_carry_manifest(path: Path) -> bool:
    """False only for an ISO BMFF file (it starts with ``ftyp``) whose top-level boxes, every
    one read to the end of the file, include no ``uuid`` box; True for anything else (another
    format, a box that does not parse, too many boxes), which the reader must judge."""
    try:
        size = os.path.getsize(path)
        with path.open("rb") as f:
            offset = 0
            for count in range(_MAX_BOXES):
                if offset == size:
                    return count == 0  # an empty file is no BMFF
                f.seek(offset)
                header = f.read(16)
                length, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if len(header) < 8 or kind == b"uuid" or (count == 0 and kind != b"ftyp"):
                    return True
                if length == 1:  # a 64-bit size follows the type
                    length = int.from_bytes(header[8:16], "big") if len(header) == 16 else 0
                elif length == 0:  # the box runs to the end of the file
                    length = size - offset
                if length < 8 or offset + length > size:
                    return True
                offset += length
    except OSError:
        return True
    return True


class ProvenanceConfig(DetectorConfig):
    """Settings of ``c2pa-provenance``."""

    trust_anchors: Path | None = Field(
        None,
        description="PEM file of root certificates whose signers count as trusted "
        "(relative paths resolve against the working directory).",
    )
    require_trusted: bool = Field(
        False,
        description="Say FAKE for a declared generative-AI origin only when the signer chains to "
        "one of trust_anchors; otherwise any valid signature is enough.",
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Longest the check of one file may take (then ABSTAIN)."
    )
    max_memory_mb: int = Field(
        2048,
        ge=256,
        description="Address space of the child process that reads the manifest (hostile "
        "manifests can make the reader use many times the file's size).",
    )
    generative_source_types: tuple[str, ...] = Field(
        GENERATIVE_SOURCE_TYPES,
        description="IPTC digital source types (last path segment) that declare generative AI.",
    )

    @field_validator("require_trusted")
    @classmethod
    def _needs_anchors(cls, value: bool, info: Any) -> bool:
        if value and info.data.get("trust_anchors") is None:
            raise ValueError("require_trusted needs trust_anchors")
        return value


@dataclass(frozen=True)
class Provenance:
    """What one file's manifest store says, boiled down to what a reviewer needs."""

    state: str  # "valid", "trusted" or "invalid"
    signer: dict[str, str]
    claim_generator: str
    actions: list[dict[str, str]]
    failures: list[str]
    manifests: int

    def generative(self, types: Sequence[str]) -> list[str]:
        """The generative source types declared anywhere in the store, in order, once each."""
        found = [a["digital_source_type"] for a in self.actions if a["digital_source_type"]]
        return list(dict.fromkeys(t for t in found if _source_type(t) in types))

    def document(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "signer": self.signer,
            "claim_generator": self.claim_generator,
            "actions": self.actions,
            "failures": self.failures,
            "manifests": self.manifests,
        }


def _source_type(uri: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> its name."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _actions(manifest: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for assertion in manifest.get("assertions", []):
        # c2pa.actions (v1) and c2pa.actions.v2 carry the same list.
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in assertion.get("data", {}).get("actions", []):
            out.append(
                {
                    "action": str(action.get("action", "")),
                    "digital_source_type": str(action.get("digitalSourceType", "")),
                    "software_agent": _agent(action.get("softwareAgent")),
                    "when": str(action.get("when", "")),
                }
            )
    return out


def _agent(agent: Any) -> str:
    # v1 manifests name the software with a string, v2 with a claim-generator-info map.
    if isinstance(agent, dict):
        return " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k))
    return str(agent or "")


def _generator(manifest: dict[str, Any]) -> str:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict):
        return " ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k))
    return str(manifest.get("claim_generator", ""))


def summarise(store: dict[str, Any]) -> Provenance:
    """A manifest store (the reader's JSON) as a ``Provenance``; the active manifest's signer
    and generator, every manifest's actions (ingredients carry their own history)."""
    manifests: dict[str, Any] = store.get("manifests", {})
    active = manifests.get(store.get("active_manifest", ""), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = [f["code"] for f in results.get("failure", []) if f.get("code") != _UNTRUSTED]
    # Failures in ingredients' manifests appear in validation_status only.
    failures += [
        s["code"]
        for s in store.get("validation_status", [])
        if s.get("code") != _UNTRUSTED and s["code"] not in failures
    ]
    state = str(store.get("validation_state", "Invalid")).lower()
    if state not in ("valid", "trusted"):
        state = "invalid"
    sig = active.get("signature_info", {})
    signer = {k: str(sig[k]) for k in ("issuer", "common_name", "alg", "time") if sig.get(k)}
    actions = [a for m in manifests.values() for a in _actions(m)]
    return Provenance(state, signer, _generator(active), actions, failures, len(manifests))


@dataclass(frozen=True)
class Finding:
    """The prepared input of ``c2pa-provenance``: the finished result, made on the CPU."""

    result: DetectorResult


class ProvenanceDetector(Detector[ProvenanceConfig]):
    """Reads and validates embedded C2PA manifests; see the module docstring for the verdicts."""

    key: ClassVar[str] = KEY
    version: ClassVar[str] = "1.0.0"
    config_class: ClassVar[type[DetectorConfig]] = ProvenanceConfig
    # Every abstention here is what the file's bytes say (or fail to say) under this validator,
    # trust list and settings: as reusable as a verdict.
    final_abstentions: ClassVar[frozenset[str]] = frozenset(
        {
            "no_manifest",
            "unsupported_format",
            "invalid_manifest",
            "unreadable_manifest",
            "untrusted_signer",
            "no_generative_ai_declared",
        }
    )

    def __init__(self, config: ProvenanceConfig) -> None:
        super().__init__(config)
        self._settings: str | None = None  # the reader's settings (JSON), made by ``setup``

    @property
    def num_frames(self) -> int:
        """None: the detector reads the container, not the pictures."""
        return 0

    @property
    def threshold(self) -> float:
        """FAKE only on a declaration, which this detector scores 1."""
        return 1.0

    def check_checkpoint(self, path: str | Path) -> str:
        raise WeightsError(f"{KEY} has no weights: it reads content credentials")

    @classmethod
    def explain(cls, result: DetectorResult) -> str:
        """What the content credentials say, and what that is worth."""
        details = result.details
        reason = details.get("reason")
        message = str(details.get("message", ""))
        said = message[:1].upper() + message[1:]
        if reason == "declared_generative_ai":
            return f"{said}: the file's signed maker record (C2PA) says it was made by AI."
        if reason == "no_manifest":
            return (
                "The file carries no content credentials (C2PA); most clips carry none, so "
                "this says nothing either way."
            )
        if reason == "no_generative_ai_declared":
            return f"{said}: a signed record of where it comes from, with no AI declared."
        if reason == "untrusted_signer":
            return (
                f"{said}; no trusted signer stands behind the declaration, so it is not "
                "taken as proof."
            )
        if reason == "invalid_manifest":
            return f"{said}: the record was altered or damaged, so it proves nothing."
        return describe(KEY, result)

    def setup(self, device: str) -> None:
        """Build the validator's context (with the trust list, if any); ``device`` is unused."""
        trust = "none"
        # Nothing is fetched: no remote manifests, no OCSP (the daemon may run offline, and a
        # hostile file must not make it call out).
        verify = {"remote_manifest_fetch": False, "ocsp_fetch": False}
        settings: dict[str, Any] = {"verify": verify | {"verify_trust": False}}
        anchors = self.config.trust_anchors
        if anchors is not None:
            try:
                pem = anchors.read_bytes()
            except OSError as exc:
                raise WeightsError(f"cannot read trust_anchors {anchors}: {exc}") from exc
            trust = hashlib.sha256(pem).hexdigest()
            settings = {
                "verify": verify | {"verify_trust": True},
                "trust": {"trust_anchors": pem.decode("ascii", "replace")},
            }
        self._settings = json.dumps(settings)
        try:
            # Built once here only to refuse bad settings (a broken PEM) at start-up; files are
            # read in a child process (``read``).
            c2pa.Context.from_json(self._settings).close()
        except c2pa.C2paError as exc:
            raise WeightsError(f"trust_anchors {anchors}: {exc}") from exc
        # No weights: the validator's version, the trust list and the settings that change a
        # verdict stand in, so that a stored verdict is not reused across a change of any.
        judging = self.config.model_dump_json(
            include={"require_trusted", "generative_source_types"}
        )
        rules = hashlib.sha256(judging.encode()).hexdigest()[:8]
        self._weights_id = f"c2pa-rs-{c2pa.sdk_version()}+trust-{trust[:16]}+rules-{rules}"

    def read(self, path: Path) -> dict[str, Any]:
        """The child process's outcome for ``path`` (see ``detectors.c2pa_probe``); a child
        that runs out of time or memory gives ``{"kind": "failed", ...}``."""
        if self._settings is None:
            raise RuntimeError("setup() has not run")
        cfg = self.config
        command = [sys.executable, "-m", "detectors.c2pa_probe", str(path)]
        try:
            done = subprocess.run(
                [*command, str(cfg.max_memory_mb * 2**20)],
                input=self._settings,
                capture_output=True,
                text=True,
                timeout=cfg.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"kind": "failed", "message": f"took longer than {cfg.timeout_s:g} s"}
        if done.returncode != 0:
            # An allocation past the limit aborts the child (c2pa-rs does not return errors
            # for it), and so would anything else that kills it.
            why = f"exited with {done.returncode}"
            if done.returncode < 0:
                why = f"was killed by {signal.Signals(-done.returncode).name}"
            return {
                "kind": "failed",
                "message": f"{why} (memory limit {cfg.max_memory_mb} MB): "
                + done.stderr.strip()[-300:],
            }
        outcome: dict[str, Any] = json.loads(done.stdout)
        return outcome

    def prepare(self, frames: SampledFrames) -> Finding:
        """Read and judge the manifest in a child process (one pass over the file for the
        content hash when there is a manifest), unless the file's boxes show there is none."""
        if frames.path is None:
            raise ValueError(f"{KEY} needs the decoded file's path")
        if not may_carry_manifest(frames.path):
            return Finding(
                _abstain("no_manifest", "no content credentials in the file (no C2PA box)")
            )
        outcome = self.read(frames.path)
        if outcome["kind"] == "failed":
            # Not a fact about the bytes (a loaded machine can time out too): never reused.
            return Finding(
                _abstain("check_failed", f"content credentials check {outcome['message']}")
            )
        if outcome["kind"] == "unsupported":
            # WebM, Matroska, MPEG-TS: C2PA defines no way to embed a manifest in them.
            return Finding(
                _abstain(
                    "unsupported_format",
                    f"content credentials cannot be embedded in {frames.info.container} files",
                )
            )
        if outcome["kind"] == "error":
            return Finding(
                _abstain("unreadable_manifest", f"content credentials: {outcome['message']}")
            )
        if outcome["kind"] == "none":
            return Finding(_abstain("no_manifest", "no content credentials in the file"))
        try:
            found = summarise(outcome["store"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A manifest store the reader accepted but whose JSON has an unexpected shape: the
            # video is still judged by the other detectors.
            return Finding(
                _abstain("unreadable_manifest", f"content credentials: {type(exc).__name__}: {exc}")
            )
        details: dict[str, Any] = {"provenance": found.document()}
        if found.state == "invalid":
            failures = ", ".join(found.failures) or "unknown failure"
            return Finding(
                _abstain(
                    "invalid_manifest", f"content credentials do not verify: {failures}", details
                )
            )
        generative = found.generative(self.config.generative_source_types)
        signer = found.signer.get("common_name") or found.signer.get("issuer") or "unknown"
        if generative and (found.state == "trusted" or not self.config.require_trusted):
            details.update(
                reason="declared_generative_ai",
                decisive=True,
                message=f"content credentials signed by {signer} ({found.state}) declare "
                f"{', '.join(_source_type(t) for t in generative)}",
            )
            return Finding(DetectorResult(Label.FAKE, 1.0, self.threshold, details=details))
        if generative:
            reason, message = (
                "untrusted_signer",
                f"generative AI declared by a signer not in trust_anchors: {signer}",
            )
        else:
            reason, message = (
                "no_generative_ai_declared",
                f"content credentials signed by {signer} ({found.state}) declare no generative AI",
            )
        return Finding(_abstain(reason, message, details))

    def predict(self, batch: Sequence[Any]) -> list[DetectorResult | DetectorError]:
        """Nothing left for the device: the findings were made in ``prepare``."""
        return [finding.result for finding in batch]


def _abstain(reason: str, message: str, details: dict[str, Any] | None = None) -> DetectorResult:
    return DetectorResult(
        Label.ABSTAIN, None, 1.0, details={**(details or {}), "reason": reason, "message": message}
    )
