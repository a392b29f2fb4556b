"""The weights manifest (``weights/manifest.json``): every shipped or imported checkpoint with the
operating point measured for it (threshold, UNCERTAIN band, probability calibration) and its
model card.

A detector configured with ``weights: manifest`` loads its key's default entry; one configured
with a checkpoint path takes the operating point of the entry with that file's sha256, from the
manifest beside the file. An explicitly configured ``threshold`` or ``uncertain_band`` overrides
the manifest's. Paths in the manifest are relative to the manifest's folder.

Its ``models`` list third-party models a detector runs beside its weights (the BlazeFace face
finder): no operating point, only the file, its sha256 (checked before use), licence and card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from detectors.base import Detector, Label, NetworkConfig
from detectors.weights import WeightsError, WeightsUnreadable, sha256_file

log = logging.getLogger(__name__)

SCHEMA = "drishtiksha.weights-manifest/1"
MANIFEST_NAME = "manifest.json"
# The word in ``weights:`` that means "this detector's default manifest entry".
FROM_MANIFEST = "manifest"


class ManifestError(WeightsError):
    """The weights manifest is missing, unreadable, or has no entry for this detector."""

    code = "weights_manifest"


class Calibration(BaseModel):
    """Platt scaling of the network's probability: ``sigmoid(a * logit(p) + b)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field("platt", pattern="^platt$")
    a: float = Field(ge=0.0)
    b: float

    def apply(self, p: float) -> float:
        """The calibrated probability of ``p``."""
        q = min(max(p, 1e-6), 1 - 1e-6)
        z = self.a * math.log(q / (1 - q)) + self.b
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


Band = tuple[float, float]


def _check_band(band: Band | None) -> Band | None:
    if band is not None and not 0.0 <= band[0] <= band[1] <= 1.0:
        raise ValueError(f"uncertain_band must satisfy 0 <= low <= high <= 1, got {list(band)}")
    return band


class HeldOut(BaseModel):
    """How well the checkpoint ranked clips it never saw: reported with every verdict it makes,
    so that a weak detector is never mistaken for a strong one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roc_auc: float = Field(ge=0.0, le=1.0)
    roc_auc_ci95: Band = Field(description="95% bootstrap interval over groups.")
    clips: int = Field(ge=1, description="Held-out clips measured.")
    report: str = Field(description="Where the measurement is written up.")


class ManifestEntry(BaseModel):
    """One checkpoint and the operating point measured for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str = Field(description="Detector key.")
    file: str = Field(description="Checkpoint, relative to the manifest's folder.")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    threshold: float = Field(ge=0.0, le=1.0, description="On the calibrated probability.")
    uncertain_band: Band | None = Field(
        None, description="Calibrated probabilities in [low, high] are answered UNCERTAIN."
    )
    calibration: Calibration | None = None
    held_out: HeldOut | None = None
    card: str | None = Field(None, description="Model card, relative to the manifest's folder.")
    default: bool = Field(False, description="The entry that ``weights: manifest`` loads.")
    registered: str = Field(description="ISO date of registration.")
    detector_config: dict[str, Any] = Field(
        default_factory=dict, description="Detector settings the operating point was measured with."
    )

    @model_validator(mode="after")
    def _valid_band(self) -> ManifestEntry:
        _check_band(self.uncertain_band)
        return self


class ModelFile(BaseModel):
    """A third-party model a detector runs beside its own weights (a face finder, say): no
    operating point, but its file is checked against the sha256 registered here before use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="What the code asks for.")
    file: str = Field(description="The model, relative to the manifest's folder.")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    license: str = Field(description="SPDX identifier; the licence text sits beside the file.")
    source: str = Field(description="Where the file was taken from, with the version.")
    card: str = Field(description="Model card, relative to the manifest's folder.")


class Manifest(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: str = Field(SCHEMA, alias="schema", pattern=f"^{SCHEMA}$")
    entries: list[ManifestEntry] = Field(default_factory=list)
    models: list[ModelFile] = Field(default_factory=list)

    def default_entry(self, detector: str) -> ManifestEntry:
        """The default entry for ``detector``; ManifestError when there is none."""
        for entry in self.entries:
            if entry.detector == detector and entry.default:
                return entry
        raise ManifestError(f"the weights manifest has no default entry for {detector}")

    def by_sha256(self, detector: str, sha256: str) -> ManifestEntry | None:
        """The entry for ``detector`` whose checkpoint has this sha256, if any."""
        return next(
            (e for e in self.entries if e.detector == detector and e.sha256 == sha256), None
        )


def read_manifest(path: Path) -> Manifest:
    """Parse and validate a manifest file."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"weights manifest not found: {path}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read weights manifest {path}: {exc}") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"invalid weights manifest {path}: {exc}") from exc


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write atomically (a reader never sees half a file), entries sorted for stable diffs."""
    entries = sorted(manifest.entries, key=lambda e: (e.detector, e.file))
    models = sorted(manifest.models, key=lambda m: m.name)
    doc = Manifest(schema=SCHEMA, entries=entries, models=models).model_dump(
        mode="json", by_alias=True
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        # mkstemp makes the file private; the manifest is read by whoever runs the daemon.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def register(path: Path, entry: ManifestEntry) -> Manifest:
    """Add ``entry`` to the manifest at ``path`` (created if missing), replacing any entry for the
    same detector and file. A default entry takes the default from its detector's others."""
    manifest = read_manifest(path) if path.exists() else Manifest(schema=SCHEMA)
    kept = [e for e in manifest.entries if (e.detector, e.file) != (entry.detector, entry.file)]
    if entry.default:
        kept = [
            e.model_copy(update={"default": False}) if e.detector == entry.detector else e
            for e in kept
        ]
    updated = Manifest(schema=SCHEMA, entries=[*kept, entry], models=manifest.models)
    write_manifest(path, updated)
    return updated


def source_tree_manifest() -> Path:
    """``weights/manifest.json`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "weights" / MANIFEST_NAME


def registered_model(name: str, manifest: Path | None = None) -> Path:
    """The file of third-party model ``name`` in ``manifest`` (default: the source checkout's),
    once it is shown to have the registered sha256."""
    manifest = manifest or source_tree_manifest()
    found = next((m for m in read_manifest(manifest).models if m.name == name), None)
    if found is None:
        raise ManifestError(f"the weights manifest {manifest} lists no model named {name}")
    path = manifest.parent / found.file
    try:
        sha256 = sha256_file(path)
    except OSError as exc:
        raise WeightsUnreadable(f"model {name} not found: {path} ({exc.strerror})") from exc
    if sha256 != found.sha256:
        raise WeightsError(
            f"{path} has sha256 {sha256}, but {manifest} registered {found.sha256}: the file "
            "is damaged or was replaced"
        )
    return path


def find_manifest(explicit: str | None, key: str) -> Path:
    """The manifest ``weights: manifest`` reads: ``explicit`` when set, else
    ``weights/manifest.json`` under the working directory when it has a default entry for
    ``key`` (a local manifest made for other detectors does not hide the shipped weights),
    else the source checkout's."""
    if explicit is not None:
        return Path(explicit)
    local = Path("weights") / MANIFEST_NAME
    if not local.exists():
        return source_tree_manifest()
    entries = read_manifest(local).entries
    if any(e.detector == key and e.default for e in entries):
        return local
    return source_tree_manifest()


class CalibratedConfig(NetworkConfig):
    """Settings of a detector whose weights bring an operating point from the manifest."""

    uncertain_band: Band | None = Field(
        None,
        description="Fake probabilities in [low, high] are answered UNCERTAIN. When written "
        "here it overrides the weights manifest's band (null: no band).",
    )
    manifest: str | None = Field(
        None,
        description="Weights manifest to read (default: weights/manifest.json under the working "
        "directory when it lists this detector, else the source checkout's; for a checkpoint "
        "path, the manifest beside it).",
    )

    @field_validator("uncertain_band")
    @classmethod
    def _ordered_band(cls, band: Band | None) -> Band | None:
        if band is not None and not 0.0 <= band[0] <= band[1] <= 1.0:
            raise ValueError("must be [low, high] with 0 <= low <= high <= 1")
        return band


@dataclass(frozen=True)
class OperatingPoint:
    """How a detector turns its network's probability into a verdict."""

    threshold: float
    uncertain_band: Band | None = None
    calibration: Calibration | None = None
    source: str = "config"  # "config", or the manifest entry's file
    held_out: HeldOut | None = None

    def probability(self, raw: float) -> float:
        """The reported (calibrated, when a calibration exists) fake probability."""
        return raw if self.calibration is None else self.calibration.apply(raw)

    def label(self, p: float) -> Label:
        """UNCERTAIN inside the band, else FAKE at or above the threshold, else REAL."""
        band = self.uncertain_band
        if band is not None and band[0] <= p <= band[1]:
            return Label.UNCERTAIN
        return Label.FAKE if p >= self.threshold else Label.REAL

    def describe(self) -> dict[str, Any]:
        """For result details: where the operating point came from and what it is."""
        return {
            "threshold": self.threshold,
            "uncertain_band": None if self.uncertain_band is None else list(self.uncertain_band),
            "calibration": None if self.calibration is None else self.calibration.model_dump(),
            "source": self.source,
            "held_out": None if self.held_out is None else self.held_out.model_dump(mode="json"),
        }


def operating_point(
    entry: ManifestEntry | None,
    threshold: float,
    band: Band | None,
    explicit: Mapping[str, bool],
) -> OperatingPoint:
    """Combine a manifest entry with the detector's settings: a setting counts only when it was
    written in the configuration (``explicit[name]``), otherwise the entry's value wins; with no
    entry the settings apply as they are (threshold 0.5, no band, no calibration by default)."""
    if entry is None:
        return OperatingPoint(threshold, _check_band(band))
    return OperatingPoint(
        threshold=threshold if explicit.get("threshold") else entry.threshold,
        uncertain_band=_check_band(
            band if explicit.get("uncertain_band") else entry.uncertain_band
        ),
        calibration=entry.calibration,
        source=entry.file,
        held_out=entry.held_out,
    )


CalibratedT = TypeVar("CalibratedT", bound=CalibratedConfig)


class CalibratedDetector(Detector[CalibratedT]):
    """A detector whose weights bring their operating point from the manifest; ``setup`` calls
    ``use_operating_point`` with the loaded weights' entry (None for dummy or unlisted ones)."""

    def __init__(self, config: CalibratedT) -> None:
        super().__init__(config)
        self._operating = OperatingPoint(config.threshold, config.uncertain_band)

    @property
    def threshold(self) -> float:
        """The operating point's threshold: from the manifest when the weights bring one."""
        return self._operating.threshold

    @property
    def operating(self) -> OperatingPoint:
        """Threshold, UNCERTAIN band and calibration in use (final after ``setup``)."""
        return self._operating

    def use_operating_point(self, entry: ManifestEntry | None) -> None:
        """Take the entry's operating point, but for what the configuration says explicitly.
        Settings that differ from those the point was measured with are logged: the weights
        still load, but their threshold and held-out figures may not hold."""
        cfg = self.config
        if entry is not None:
            current = cfg.model_dump(mode="json")
            changed = sorted(
                name
                for name, value in entry.detector_config.items()
                if name in current and current[name] != value
            )
            if changed:
                log.warning(
                    "%s: %s differ from the settings %s's operating point was measured with",
                    self.key,
                    ", ".join(
                        f"{n} ({current[n]!r}, measured {entry.detector_config[n]!r})"
                        for n in changed
                    ),
                    entry.file,
                )
        self._operating = operating_point(
            entry,
            cfg.threshold,
            cfg.uncertain_band,
            {name: name in cfg.model_fields_set for name in ("threshold", "uncertain_band")},
        )


def resolve_weights(
    key: str, weights: str, manifest: str | None, load: Callable[[Path], str]
) -> tuple[str, ManifestEntry | None]:
    """Load ``key``'s configured checkpoint with ``load(path) -> sha256``; returns the sha256 and
    the manifest entry that carries its operating point, if any.

    ``weights: manifest`` takes the key's default entry and insists the file still has the
    registered sha256. A path takes the entry with its sha256 from ``manifest`` (or the manifest
    beside the file, when there is one)."""
    if weights == FROM_MANIFEST:
        manifest_path = find_manifest(manifest, key)
        entry = read_manifest(manifest_path).default_entry(key)
        sha256 = load(manifest_path.parent / entry.file)
        if sha256 != entry.sha256:
            raise WeightsError(
                f"{entry.file} has sha256 {sha256}, but {manifest_path} registered "
                f"{entry.sha256}: the file changed after its operating point was measured"
            )
        return sha256, entry
    sha256 = load(Path(weights))
    manifest_path = Path(manifest or Path(weights).parent / MANIFEST_NAME)
    if manifest is None and not manifest_path.exists():
        return sha256, None
    try:
        return sha256, read_manifest(manifest_path).by_sha256(key, sha256)
    except ManifestError:
        if manifest is not None:
            raise
        # A broken manifest someone else keeps beside the file must not stop a checkpoint
        # that was named directly; it then runs on the configured threshold.
        return sha256, None
