"""The center's API from the other side: for the command line, ``ztgate enroll``, renewals and the
gateways' subscription.

With credentials, a client presents its certificate and accepts only a server whose certificate (from
the credentials' CA) proves a ``center`` SPIFFE id of the trust domain, checked inside the handshake.
Before enrollment there are no credentials: :class:`PinnedCenter` then accepts whatever certificate the
server shows on its first connection, holds every later connection to the same key, and
:meth:`PinnedCenter.verify` compares the fingerprint the operator was given before the token leaves.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.center.authority import fingerprint, spki_der
from gateway.center.bundles import BundleError, parse_key
from gateway.credentials import Credentials
from gateway.identity import PeerPin
from gateway.tls import client_context, pinning_context

__all__ = ["CenterClient", "CenterError", "PinnedCenter"]

TIMEOUT_S = 15.0


class CenterError(Exception):
    """The center refused a request (``status`` >= 400) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body or {}

    def __str__(self) -> str:
        return self.message if self.status == 0 else f"{self.message} (HTTP {self.status})"


class CenterClient:
    def __init__(self, url: str, context: ssl.SSLContext, *, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.context = context
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(ssl=context, limit=4),
        )

    @classmethod
    def for_credentials(cls, credentials: Credentials, *, url: str | None = None) -> CenterClient:
        info = credentials.center()
        tls = credentials.tls
        context = client_context(tls.cert, tls.key, tls.ca, peer=PeerPin(info.trust_domain, "center"))
        return cls(url or info.url, context)

    async def __aenter__(self) -> CenterClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        data = None if body is None else orjson.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        try:
            async with self._session.request(
                method, self.url + path, data=data, headers=headers, params=params
            ) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CenterError(
                0, f"{self.url} is not the center these credentials trust: {exc.certificate_error}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CenterError(
                0, f"cannot reach the center at {self.url}: {exc or type(exc).__name__}"
            ) from None
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CenterError(
                status, f"the center answered {status} with something other than JSON"
            ) from None
        if status >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise CenterError(status, str(error.get("message", "error")), error)
        if not isinstance(answer, dict):
            raise CenterError(status, "the center answered with something other than a JSON object")
        return answer


class PinnedCenter:
    """An unauthenticated client that pins the server's TLS key of its first connection (enrollment)."""

    def __init__(self, url: str) -> None:
        self.spki: bytes | None = None
        self.certificate: x509.Certificate | None = None
        self.client = CenterClient(url, pinning_context(self._pin))

    def _pin(self, der: bytes) -> None:
        certificate = x509.load_der_x509_certificate(der)
        public_key = spki_der(certificate.public_key())  # type: ignore[arg-type]
        if self.spki is None:
            self.spki, self.certificate = public_key, certificate
        elif public_key != self.spki:
            raise ssl.SSLCertVerificationError("the center's key changed between two connections")

    async def verify(self, expected: str) -> dict[str, Any]:
        """The center's description, once its TLS key and signing key match ``expected``; raises
        :class:`CenterError` (status 0) with the mismatch otherwise, before anything secret is sent."""
        info = await self.client.call("GET", "/v1/info")
        assert self.certificate is not None
        keys = info.get("signing_keys")
        try:
            signing = parse_key(keys[0]) if isinstance(keys, list) and keys else None
        except BundleError:
            signing = None
        if signing is None:
            raise CenterError(0, "the center described itself without a signing key")
        found = fingerprint(self.certificate.public_key(), signing)  # type: ignore[arg-type]
        if found != expected.strip().lower():
            raise CenterError(
                0, f"fingerprint mismatch: the center at {self.client.url} has {found}, expected {expected}"
            )
        try:
            cas = x509.load_pem_x509_certificates(str(info["ca"]).encode())
            if not any(_issued_by(self.certificate, ca) for ca in cas):
                raise ValueError("not issued by the CA it names")
        except (KeyError, ValueError) as exc:
            raise CenterError(0, f"the center's certificate does not match its CA: {exc}") from None
        return info

    async def close(self) -> None:
        await self.client.close()


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
