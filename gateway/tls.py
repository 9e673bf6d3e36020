"""TLS contexts for the overlay: TLS 1.3 only, mutual, identities are SPIFFE ids.

Chain, validity period and the CA's name constraints are OpenSSL's job (``CERT_REQUIRED``); the
identity a verified certificate proves is read with :func:`gateway.identity.identity_from_certificate`.
Host names are not checked anywhere: the overlay authenticates workloads by SPIFFE id, and SNI names
the asset, not the gateway.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.identity import identity_from_certificate
from policies.spiffe import IdentityError, SpiffeId

# Protocol names a client may offer in ALPN; a client that offers one must reach an asset of that protocol.
ALPN_PROTOCOLS = ("modbus", "enip", "opcua")


def _base_context(purpose: int, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = (
        _FixedServerNameContext(purpose) if purpose == ssl.PROTOCOL_TLS_CLIENT else ssl.SSLContext(purpose)
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    # No session tickets: every connection is authenticated with a full handshake against the current
    # CA file, and a resumed session could outlive a certificate's revocation.
    context.options |= ssl.OP_NO_TICKET
    return context


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The gateway's overlay context: client certificates required and verified against ``ca``."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    # With OP_NO_TICKET, OpenSSL's TLS 1.3 server still issues *stateful* tickets and keeps each session
    # (with the client's certificate) in its cache, up to 20,480: resumable, and ~11 KiB each (the fuzz
    # campaign saw the gateway grow by 240 MiB). No ticket at all: nothing cached, nothing to resume.
    context.num_tickets = 0
    return context


class _FixedServerNameContext(ssl.SSLContext):
    """Sends one fixed SNI on every connection: for client libraries that cannot be given a server
    name (pymodbus passes the host, and Python sends no SNI for an IP address)."""

    server_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def client_context(
    cert: Path, key: Path, ca: Path, *, alpn: str | None = None, server_name: str | None = None
) -> ssl.SSLContext:
    """An overlay client's context (the agent, tests, tools): verifies the gateway's chain, not its name.

    ``server_name`` fixes the SNI (the asset) for every connection made with this context, whatever
    host name the caller passes.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    if server_name is not None:
        assert isinstance(context, _FixedServerNameContext)
        context.server_name = server_name
    context.check_hostname = False
    if alpn is not None:
        context.set_alpn_protocols([alpn])
    return context


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket, trust_domain: str) -> SpiffeId:
    """The SPIFFE id the peer's (already verified) certificate proves; raises IdentityError."""
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise IdentityError("no client certificate")
    return identity_from_certificate(der, trust_domain)


def certificate_not_after(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> float | None:
    """The peer certificate's notAfter as epoch seconds, for closing sessions when it expires."""
    info = ssl_object.getpeercert()
    if not info or "notAfter" not in info:
        return None
    return float(ssl.cert_time_to_seconds(str(info["notAfter"])))
