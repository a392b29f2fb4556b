"""Content credentials (C2PA manifests) that the tests sign themselves, with a throw-away CA."""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI = IPTC + "trainedAlgorithmicMedia"
AI_COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
CAPTURE = IPTC + "digitalCapture"

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Credentials:
    """A signing key, its certificate chain (signer, then root) and the root alone."""

    chain_pem: bytes
    key_pem: bytes
    root_pem: bytes
    signer_name: str


def _name(common_name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def _usage(**allowed: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    return x509.KeyUsage(**(flags | allowed))


def make_credentials(
    signer_name: str = "test signer", org: str = "Drishtiksha tests"
) -> Credentials:
    """A root CA and an ES256 signer it issued, shaped as C2PA wants signing certificates
    (not a CA, digitalSignature, an allowed extended key usage)."""
    now = dt.datetime.now(dt.UTC)
    valid = {
        "not_valid_before": now - dt.timedelta(days=1),
        "not_valid_after": now + dt.timedelta(days=30),
    }
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"{org} root", org)
    root = (
        x509.CertificateBuilder(**valid)
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder(**valid)
        .subject_name(_name(signer_name, org))
        .issuer_name(root_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Credentials(
        leaf.public_bytes(_PEM) + root.public_bytes(_PEM),
        key_pem,
        root.public_bytes(_PEM),
        signer_name,
    )


def action(name: str, source_type: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"action": name}
    if source_type is not None:
        out["digitalSourceType"] = source_type
    return out


def sign_video(
    src: Path,
    dst: Path,
    creds: Credentials,
    actions: list[dict[str, Any]],
    parent: Path | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> Path:
    """Copy ``src`` to ``dst`` with a signed manifest declaring ``actions`` (and ``extra``
    assertions); ``parent`` (a signed file) becomes its parent ingredient, manifest and all."""
    if parent is not None:
        # C2PA requires the opening of a parent to name it.
        opened = {"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}}
        actions = [opened, *actions]
    manifest = {
        "claim_generator_info": [{"name": "drishtiksha-tests", "version": "1"}],
        "title": dst.name,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}, *(extra or [])],
    }
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, creds.chain_pem, creds.key_pem, None)
    )
    with c2pa.Builder(manifest) as builder:
        if parent is not None:
            with parent.open("rb") as stream:
                builder.add_ingredient(
                    {"title": parent.name, "relationship": "parentOf", "label": "parent"},
                    "video/mp4",
                    stream,
                )
        with src.open("rb") as source, dst.open("w+b") as out:
            builder.sign(signer, "video/mp4", source, out)
    return dst


_C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")


def _boxes(data: bytes, start: int, end: int) -> list[list[Any]]:
    """JUMBF boxes in ``data[start:end]``: [type, children or payload]."""
    out: list[list[Any]] = []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        body = (
            _boxes(data, start + 8, start + size)
            if kind == b"jumb"
            else data[start + 8 : start + size]
        )
        out.append([kind, body])
        start += size
    return out


def _serialise(boxes: list[list[Any]]) -> bytes:
    parts = []
    for kind, body in boxes:
        payload = _serialise(body) if kind == b"jumb" else body
        parts.append(struct.pack(">I4s", 8 + len(payload), kind) + payload)
    return b"".join(parts)


def _label(box: list[Any]) -> bytes | None:
    """The label of a JUMBF superbox (its description box's toggles say whether it has one)."""
    description = box[1][0][1]
    if box[0] != b"jumb" or not description[16] & 2:
        return None
    return bytes(description[17 : description.index(b"\0", 17)])


def _replace(boxes: list[list[Any]], label: bytes, payload: bytes) -> None:
    for box in boxes:
        if box[0] != b"jumb":
            continue
        if _label(box) == label:
            box[1][1][1] = payload
        else:
            _replace(box[1], label, payload)


def sign_with_bloated_assertion(src: Path, dst: Path, creds: Credentials, size: int) -> Path:
    """A signed copy of ``src`` whose manifest carries a custom assertion of ``size`` bytes of
    CBOR (a hostile file: c2pa-rs needs some hundred times that in memory to read it). The
    original manifest box becomes a ``free`` box, so sample offsets and decoding are intact,
    and the rebuilt one is appended."""
    bloated = dst.with_suffix(".small.mp4")
    sign_video(
        src,
        bloated,
        creds,
        [action("c2pa.created", AI)],
        extra=[{"label": "x.big", "data": {"v": 0}}],
    )
    data = bloated.read_bytes()
    start = data.index(_C2PA_UUID) - 8
    (length,) = struct.unpack(">I", data[start : start + 4])
    # uuid box header, C2PA UUID, version/flags, "manifest\0" purpose, aux offset, then JUMBF.
    jumbf = start + 8 + 16 + 4 + 9 + 8
    store = _boxes(data, jumbf, start + length)
    _replace(store, b"x.big", b"\xa1\x61v\x5a" + struct.pack(">I", size) + bytes(size))
    body = _C2PA_UUID + b"\0\0\0\0manifest\0" + bytes(8) + _serialise(store)
    freed = struct.pack(">I4s", length, b"free") + bytes(length - 8)
    dst.write_bytes(
        data[:start]
        + freed
        + data[start + length :]
        + struct.pack(">I4s", 8 + len(body), b"uuid")
        + body
    )
    bloated.unlink()
    return dst
