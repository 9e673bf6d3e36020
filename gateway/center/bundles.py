"""The signed documents a center sends its gateways, and their verification.

A document is a JSON object with a ``kind``; its canonical form (orjson, sorted keys) is signed with
the center's Ed25519 key. On the wire and on disk it travels as an envelope, ``{"body": <the
canonical JSON as a string>, "signature": <base64>}``: the verifier checks the signature over the
exact bytes it received before it parses them, so nothing depends on re-serialising JSON alike.

Kinds (:data:`KIND_ORDER` is the order a stream sends what a gateway lacks, most urgent first: ``locks``
go before ``policy`` so that they overtake a policy revision still queued):

- ``policy``: ``revision`` (a number that only grows), ``policy`` (the TOML text), ``policy_sha256``,
  ``issued_at``, ``not_after`` (a gateway never loads it afterwards), ``trust_domain``;
- ``locks``: ``revision`` (the ``locks`` head: it grows with every lock created or removed), ``locks``
  (every lock in force: :meth:`gateway.locks.Lock.to_json`), ``issued_at``, ``not_after``,
  ``trust_domain``. A gateway enforces it whatever its ``not_after``: a lock only takes access away;
- ``heartbeat``: ``heads`` (the newest revision of every kind), ``issued_at``; sent while nothing
  changes, it tells a gateway that what it holds is still the newest (its staleness clock restarts).

Every document may carry ``next_keys``: public keys the gateway is to trust from then on, so that the
signing key can be rotated without visiting every gateway (docs/center.md).

This module is imported by gateways: it needs ``cryptography`` and ``orjson`` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "FORMAT",
    "KIND_ORDER",
    "BundleError",
    "Document",
    "encode_key",
    "key_id",
    "parse_key",
    "sign",
    "verify",
]

FORMAT = 1
KIND_ORDER = ("locks", "policy")
_KINDS = frozenset((*KIND_ORDER, "heartbeat"))
# What a document of each kind must carry, with the JSON types allowed.
_FIELDS: Mapping[str, Mapping[str, tuple[type, ...]]] = {
    "policy": {
        "revision": (int,),
        "policy": (str,),
        "policy_sha256": (str,),
        "issued_at": (int, float),
        "not_after": (int, float),
        "trust_domain": (str,),
    },
    "locks": {
        "revision": (int,),
        "locks": (list,),
        "issued_at": (int, float),
        "not_after": (int, float),
        "trust_domain": (str,),
    },
    "heartbeat": {"heads": (dict,), "issued_at": (int, float)},
}
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


class BundleError(ValueError):
    """A document that must not be used: bad signature, unknown key, malformed; the message says which."""


@dataclass(frozen=True)
class Document:
    """A verified document: its fields, the envelope it came in (to keep on disk) and the key's id."""

    fields: Mapping[str, Any]
    envelope: bytes
    key: str

    @property
    def kind(self) -> str:
        return str(self.fields["kind"])

    @property
    def revision(self) -> int:
        return int(self.fields["revision"])

    @property
    def issued_at(self) -> float:
        return float(self.fields["issued_at"])


def encode_key(key: Ed25519PublicKey) -> str:
    """A public key as the center prints and pins it: base64 of the 32 raw bytes."""
    return base64.b64encode(key.public_bytes_raw()).decode()


def parse_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise BundleError(f"not an Ed25519 public key (base64 of 32 bytes): {text[:60]!r}") from None


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key in documents and audit records."""
    return hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, fields: Mapping[str, Any], next_keys: Iterable[str] = ()) -> bytes:
    """The envelope of a document with ``fields`` (``kind`` among them), signed by ``key``."""
    document = {"format": FORMAT, **fields, "key": key_id(key.public_key())}
    extra = list(next_keys)
    if extra:
        document["next_keys"] = extra
    body = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    signature = base64.b64encode(key.sign(body)).decode()
    return orjson.dumps({"body": body.decode(), "signature": signature})


def verify(envelope: bytes, trusted: Mapping[str, Ed25519PublicKey]) -> Document:
    """Check an envelope against the trusted keys (by key id) and return the document.

    Raises :class:`BundleError` for anything that is not a well-formed document signed by one of them.
    """
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise BundleError(f"larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        outer = orjson.loads(envelope)
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"not JSON: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"body", "signature"}:
        raise BundleError('not an envelope: expected exactly "body" and "signature"')
    body, signature = outer["body"], outer["signature"]
    if not isinstance(body, str) or not isinstance(signature, str):
        raise BundleError("body and signature must be strings")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
        fields = orjson.loads(body)
    except (binascii.Error, orjson.JSONDecodeError) as exc:
        raise BundleError(f"malformed envelope: {exc}") from None
    if not isinstance(fields, dict):
        raise BundleError("the body is not a JSON object")
    kid = fields.get("key")
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise BundleError(f"signed with key {kid!r}, which this gateway does not trust")
    try:
        key.verify(raw_signature, body.encode())
    except InvalidSignature:
        raise BundleError(f"bad signature (key {kid})") from None
    _check_fields(fields)
    return Document(fields, envelope, str(kid))


def _check_fields(fields: dict[str, Any]) -> None:
    if fields.get("format") != FORMAT:
        raise BundleError(f"format {fields.get('format')!r} is not {FORMAT}")
    kind = fields.get("kind")
    if kind not in _KINDS:
        raise BundleError(f"unknown kind {kind!r}")
    for name, types in _FIELDS[kind].items():
        value = fields.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise BundleError(f"{kind} document: field {name!r} missing or of the wrong type")
    if kind == "policy":
        digest = hashlib.sha256(fields["policy"].encode()).hexdigest()
        if digest != fields["policy_sha256"]:
            raise BundleError("policy_sha256 does not match the policy text")
    next_keys = fields.get("next_keys", [])
    if not isinstance(next_keys, list) or not all(isinstance(k, str) for k in next_keys):
        raise BundleError("next_keys must be a list of keys")
