"""TLS contexts for the overlay and the center: TLS 1.3 only, mutual, identities are SPIFFE ids.

Chain, validity period and the CA's name constraints are OpenSSL's job (``CERT_REQUIRED``); the
identity a verified certificate proves is read with :func:`gateway.identity.identity_from_certificate`.
Host names are not checked anywhere: the overlay authenticates workloads by SPIFFE id, and SNI names
the asset, not the gateway. A client that must reach one kind of peer (the center) checks the peer's
SPIFFE id inside the handshake (:class:`gateway.identity.PeerPin`: the center's kind, the agent's
gateway), before a byte of application data leaves. The overlay's server side makes sure a refused
client certificate's TLS alert reaches the client.

:class:`TlsMaterial` holds contexts built from certificate files and rebuilds them when the files are
replaced (a renewal, SIGHUP, files changed on disk): new handshakes take the new context, and a
connection made with the old one keeps it to its end, so a reload drops no session. It checks that the
certificate fits the process's :class:`Role`, and watches its dates (readiness, gauges, log warnings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.config import TlsFiles
from gateway.identity import PeerPin, identity_from_certificate
from policies.spiffe import CLIENT_KINDS, IdentityError, SpiffeId

log = logging.getLogger("ztgate.tls")

T = TypeVar("T")

# Protocol names a client may offer in ALPN; a client that offers one must reach an asset of that protocol.
ALPN_PROTOCOLS = ("modbus", "enip", "opcua")
# Reserved ALPN value of a proof of renewal (gateway/renewal_proof.py): no asset, no session.
RENEWAL_ALPN = "ztgate-renewal"


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file and why."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(f"{path}: cannot read the {what}: {error.strerror}") from None


def load_files(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """Load the certificate, key and CA files into ``context``. OpenSSL's own errors name no file
    ("PEM lib"), so each file is read and parsed first, and a refusal names the file at fault."""
    if cert is not None and key is not None:
        cert_pem, key_pem = _read(cert, "certificate"), _read(key, "private key")
        try:
            x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            raise TlsFileError(f"{cert}: not a PEM certificate") from None
        try:
            serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise TlsFileError(f"{key}: not an unencrypted PEM private key") from None
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                raise TlsFileError(f"{key}: not the private key of the certificate {cert}") from None
            raise TlsFileError(f"{cert}, {key}: {error}") from None
    if ca is not None:
        ca_pem = _read(ca, "CA bundle")
        try:
            x509.load_pem_x509_certificates(ca_pem)
            context.load_verify_locations(cafile=ca)
        except (ValueError, ssl.SSLError):
            raise TlsFileError(f"{ca}: not a PEM CA bundle (no certificate in it)") from None


def _base_context(
    purpose: int, cert: Path | None, key: Path | None, ca: Path, *, alerting: bool = False
) -> ssl.SSLContext:
    context = (
        _FixedServerNameContext(purpose)
        if purpose == ssl.PROTOCOL_TLS_CLIENT
        else _ServerContext(purpose)
        if alerting
        else ssl.SSLContext(purpose)
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    load_files(context, cert, key, ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    # No session tickets: every connection is authenticated with a full handshake against the current
    # CA file, and a resumed session could outlive a certificate's revocation.
    context.options |= ssl.OP_NO_TICKET
    return context


# The attribute of a server-side SSLObject where the SNI the client sent is kept.
SNI_ATTRIBUTE = "ztgate_server_name"
_OUTGOING_ATTRIBUTE = "ztgate_outgoing"

# The socket a server-side handshake runs on, set by the listener around the handshake (the event
# loop runs the transport's callbacks in a copy of the context that created it).
HANDSHAKE_SOCKET: ContextVar[socket.socket | None] = ContextVar("ztgate_handshake_socket", default=None)


class _AlertingServerObject(ssl.SSLObject):
    """A server-side SSLObject that makes sure a refused client certificate's TLS alert reaches the
    client. OpenSSL writes the alert (certificate expired, unknown CA, ...) into the outgoing buffer
    and fails the handshake; asyncio's and uvloop's TLS layers then close the socket without sending
    that buffer, and the client (whose TLS 1.3 handshake had already completed) sees only a closed
    connection, which looks like any other refusal. The same holds for a missing certificate and any
    other failed handshake. The alert is what lets an agent say "your certificate expired" rather
    than "unknown asset"; it tells nothing an OpenSSL server would not."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError:
            outgoing: ssl.MemoryBIO | None = getattr(self, _OUTGOING_ATTRIBUTE, None)
            sock = HANDSHAKE_SOCKET.get()
            if outgoing is not None and sock is not None and outgoing.pending:
                with contextlib.suppress(OSError):
                    sock.send(outgoing.read())
            raise


class _ServerContext(ssl.SSLContext):
    sslobject_class = _AlertingServerObject

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        ssl_object = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        setattr(ssl_object, _OUTGOING_ATTRIBUTE, outgoing)
        _bind_record_calls(ssl_object)
        return ssl_object


_RECORD_CALLS = ("read", "write", "pending")


def _bind_record_calls(ssl_object: ssl.SSLObject) -> None:
    """Have ``ssl_object``'s ``read``, ``write`` and ``pending`` be the C object's own methods: the event
    loop's TLS layer calls them for every record, and ``ssl.SSLObject``'s are Python functions that only
    pass their arguments on (one interpreted frame each, three per Modbus round trip)."""
    # The _ssl object every SSLObject of CPython 3.11 wraps. A private name: should a later Python not have
    # it (or its methods), the SSLObject keeps its own, which do the same a frame slower.
    inner = getattr(ssl_object, "_sslobj", None)
    calls = [getattr(inner, name, None) for name in _RECORD_CALLS]
    if all(callable(call) for call in calls):
        for name, call in zip(_RECORD_CALLS, calls, strict=True):
            setattr(ssl_object, name, call)


def _remember_server_name(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
    # The server side cannot read SNI back after the handshake; keep it on the connection's SSLObject.
    setattr(ssl_object, SNI_ATTRIBUTE, server_name)


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The gateway's overlay context: client certificates required and verified against ``ca``; the
    SNI of each connection is kept on its SSLObject under :data:`SNI_ATTRIBUTE`."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca, alerting=True)
    context.set_alpn_protocols([*ALPN_PROTOCOLS, RENEWAL_ALPN])
    # With OP_NO_TICKET, OpenSSL's TLS 1.3 server still issues *stateful* tickets and keeps each session
    # (with the client's certificate) in its cache, up to 20,480: resumable, and ~11 KiB each (the fuzz
    # campaign saw the gateway grow by 240 MiB). No ticket at all: nothing cached, nothing to resume.
    context.num_tickets = 0
    context.sni_callback = _remember_server_name
    return context


def https_server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The center's context: a client certificate is asked for and verified against ``ca`` when sent,
    but not required by TLS (enrollment comes without one); the API refuses what needs one."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class _PeerCheckedObject(ssl.SSLObject):
    """An SSLObject whose handshake also runs its context's ``peer_check`` on the verified peer
    certificate, so a peer of the wrong kind fails the handshake like a bad chain does."""

    def do_handshake(self) -> None:
        super().do_handshake()
        check: Callable[[bytes], None] | None = getattr(self.context, "peer_check", None)
        der = self.getpeercert(binary_form=True)
        if check is not None and der is not None:
            check(der)


class _FixedServerNameContext(ssl.SSLContext):
    """Sends one fixed SNI on every connection: for client libraries that cannot be given a server
    name (pymodbus passes the host, and Python sends no SNI for an IP address)."""

    server_name: str | None = None
    peer_check: Callable[[bytes], None] | None = None

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
    cert: Path | None,
    key: Path | None,
    ca: Path,
    *,
    alpn: str | None = None,
    server_name: str | None = None,
    peer: PeerPin | None = None,
) -> ssl.SSLContext:
    """A client's context (the agent, the center's clients, tests, tools): verifies the server's chain,
    not its name. Without ``cert`` and ``key`` it presents no certificate (enrollment).

    ``server_name`` fixes the SNI (the asset) for every connection made with this context, whatever
    host name the caller passes. ``peer`` makes the handshake fail unless the server's certificate
    proves a SPIFFE id the pin accepts (the center's kind; the agent's gateway), before a byte of
    application data leaves.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    assert isinstance(context, _FixedServerNameContext)
    if server_name is not None:
        context.server_name = server_name
    context.check_hostname = False
    if alpn is not None:
        context.set_alpn_protocols([alpn])
    if peer is not None:
        context.peer_check = _pin_check(peer)
        context.sslobject_class = _PeerCheckedObject
    return context


def pinning_context(check: Callable[[bytes], None]) -> ssl.SSLContext:
    """A client context that trusts no CA and presents no certificate, but runs ``check`` on the
    server's certificate inside every handshake: for enrollment, where the server is known only by the
    fingerprint an operator was given."""
    context = _FixedServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.peer_check = check
    context.sslobject_class = _PeerCheckedObject
    return context


class PinMismatchError(ssl.SSLCertVerificationError):
    """The server's certificate is valid, but proves another identity than the one pinned."""

    def __str__(self) -> str:
        # uvloop hands the exception on with its args wrapped once more; say the problem, not a tuple.
        found: object = self.args
        while isinstance(found, tuple) and len(found) == 1:
            found = found[0]
        return str(found)


def _pin_check(pin: PeerPin) -> Callable[[bytes], None]:
    def check(der: bytes) -> None:
        try:
            found = identity_from_certificate(der, None)
        except IdentityError as exc:
            raise ssl.SSLCertVerificationError(f"the server's certificate: {exc}") from None
        problem = pin.problem(found)
        if problem is not None:
            raise PinMismatchError(problem)

    return check


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


# ----------------------------------------------------------------------------- reloadable material


def certificate_dates(path: Path) -> tuple[float, float]:
    """The first certificate's notBefore and notAfter in a PEM file, as epoch seconds."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.not_valid_before_utc.timestamp(), certificate.not_valid_after_utc.timestamp()


class CertificateRoleError(ValueError):
    """A process was given a certificate for another role; the message names the file and the role."""


@dataclass(frozen=True)
class Role:
    """What a process's own certificate must be: one of ``kinds``, usable for serving TLS or not."""

    process: str
    kinds: frozenset[str]
    server: bool

    def check(self, path: Path) -> SpiffeId:
        """The SPIFFE id of the certificate in ``path``; raises CertificateRoleError (and OSError,
        ValueError for a file that holds no certificate)."""
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        try:
            found = identity_from_certificate(certificate.public_bytes(Encoding.DER), None)
        except IdentityError as exc:
            raise CertificateRoleError(f"{path}: {exc}") from None
        if found.kind not in self.kinds:
            *others, last = sorted(self.kinds)
            wanted = f"{', '.join(others)} or {last}" if others else last
            raise CertificateRoleError(
                f"{path} holds a {found.kind} certificate ({found}); "
                f"the {self.process} takes only {wanted} certificates"
            )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if self.server else ExtendedKeyUsageOID.CLIENT_AUTH
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return found
        if usage not in usages:
            side = "serverAuth" if self.server else "clientAuth"
            raise CertificateRoleError(
                f"{path} holds a {found.kind} certificate ({found}) without the {side} key usage "
                f"the {self.process} needs"
            )
        return found


GATEWAY_ROLE = Role("gateway", frozenset({"gateway"}), server=True)
CENTER_ROLE = Role("center", frozenset({"center"}), server=True)
# Users and vendors run the agent on their own laptops too; a server's certificate never does.
AGENT_ROLE = Role("agent", CLIENT_KINDS, server=False)


# A certificate is near its end from this fraction of its lifetime before notAfter: a warning is logged.
EXPIRY_WARNING_FRACTION = 0.2

Signature = tuple[tuple[int, int, int], ...]  # (inode, size, mtime_ns) of cert, key and CA


class TlsMaterial(Generic[T]):
    """What ``build`` makes of a certificate, key and CA (a context, or several), rebuilt on demand.

    :meth:`reload` reads the files again; a broken set (unreadable, key not matching the certificate,
    a certificate of another ``role``) raises and the material in use stays. Callers take
    :attr:`current` for every new connection, so a live connection keeps the context it was made
    with: a reload (renewal, SIGHUP, files replaced) drops no session. :meth:`watch` reloads when the
    files change and warns in the log as the certificate nears its end. The certificate's dates, and
    the CA certificates', are kept for renewal, readiness and expiry gauges.
    """

    def __init__(
        self,
        files: TlsFiles,
        build: Callable[[TlsFiles], T],
        *,
        role: Role | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = files
        self._build = build
        self._role = role
        self._clock = clock
        self._listeners: list[Callable[[TlsMaterial[T]], None]] = []
        self._signature = self._stat()
        self.identity = role.check(files.cert) if role is not None else None
        self.current: T = build(files)
        self.not_before, self.not_after = certificate_dates(files.cert)
        self.ca_not_after = ca_dates(files.ca)
        self.loaded_at = clock()
        self.reloads = 0
        self.reload_error: str | None = None  # the last reload that failed, until one succeeds
        self.last_trigger = "start"
        self._logged: set[str] = set()  # expiry messages logged for the certificate in use
        self._seen = self._signature  # what the files looked like at the last look

    def subscribe(self, listener: Callable[[TlsMaterial[T]], None]) -> None:
        """Call ``listener(material)`` after every successful reload."""
        self._listeners.append(listener)

    def reload(self, trigger: str = "request") -> None:
        """Rebuild from the files; raises (OSError, ssl.SSLError, ValueError) and keeps the old on failure."""
        signature = self._stat()
        try:
            identity = self._role.check(self.files.cert) if self._role is not None else None
            built = self._build(self.files)
            dates = certificate_dates(self.files.cert)
            ca = ca_dates(self.files.ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.reload_error = f"{trigger}: {exc}"
            raise
        self.current = built
        self.identity = identity
        self.not_before, self.not_after = dates
        self.ca_not_after = ca
        self._signature = self._seen = signature
        self.loaded_at = self._clock()
        self.reloads += 1
        self.reload_error = None
        self._logged.clear()
        self.last_trigger = trigger
        log.info(
            "TLS material reloaded from %s (%s; valid until %s)", self.files.cert, trigger, _utc(dates[1])
        )
        for listener in self._listeners:
            listener(self)

    def try_reload(self, trigger: str) -> bool:
        """:meth:`reload`, but a set that does not load is logged (and kept in :attr:`reload_error`)
        instead of raised: False, and the previous material stays."""
        try:
            self.reload(trigger)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS files do not load (%s), keeping the previous ones: %s", trigger, exc)
            return False
        return True

    # ------------------------------------------------------------------------- files and expiry

    def _stat(self) -> Signature:
        found = []
        for path in (self.files.cert, self.files.key, self.files.ca):
            try:
                info = path.stat()
            except OSError:
                found.append((0, -1, 0))
            else:
                found.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(found)

    def poll(self) -> bool:
        """Reload if the files changed and have stayed so since the last look (a writer replacing
        them one by one, or in pieces, is not caught half-way); True if reloaded. A set that does not
        load is logged once and retried when the files change again."""
        now = self._stat()
        settled = now == self._seen
        self._seen = now
        if not settled or now == self._signature:
            return False
        self._signature = now  # a set that does not load is logged once, and tried at the next change
        return self.try_reload("files changed")

    def validity_problem(self) -> str | None:
        """Why the certificate in use cannot serve now (expired, not yet valid), or None."""
        now = self._clock()
        if now >= self.not_after:
            return f"the certificate {self.files.cert} expired at {_utc(self.not_after)}"
        if now < self.not_before:
            return f"the certificate {self.files.cert} is not valid before {_utc(self.not_before)}"
        return None

    def check_expiry(self) -> None:
        """Log, once per certificate loaded: an error when it is expired or not yet valid, a warning
        from :data:`EXPIRY_WARNING_FRACTION` of its lifetime before its end."""
        problem = self.validity_problem()
        if problem is not None:
            if problem not in self._logged:
                self._logged.add(problem)
                log.error("%s: new TLS handshakes fail until it is replaced", problem)
            return
        lifetime_s = self.not_after - self.not_before
        left_s = self.not_after - self._clock()
        if left_s <= lifetime_s * EXPIRY_WARNING_FRACTION and "near" not in self._logged:
            self._logged.add("near")
            log.warning(
                "the certificate %s expires at %s (%.0f s left of a %.0f s lifetime): renew it",
                self.files.cert, _utc(self.not_after), left_s, lifetime_s,
            )  # fmt: skip

    async def watch(self, interval_s: float) -> None:
        """Every ``interval_s``: :meth:`poll` the files, :meth:`check_expiry`. Until cancelled."""
        self.check_expiry()
        while True:
            await asyncio.sleep(interval_s)
            self.poll()
            self.check_expiry()

    def expiry_seconds(self) -> list[tuple[tuple[str, str, str], float]]:
        """For the ``ztgate_certificate_expiry_seconds`` gauge: ((certificate, file, subject),
        seconds until notAfter) for the certificate in use and each CA certificate trusted."""
        now = self._clock()
        found = [(("leaf", str(self.files.cert), str(self.identity or "")), self.not_after - now)]
        ca = str(self.files.ca)
        found += [(("ca", ca, subject), not_after - now) for subject, not_after in self.ca_not_after]
        return found

    def status(self) -> dict[str, object]:
        """For /readyz: the certificate's file and dates, seconds left; not ready while it cannot serve."""
        problem = self.validity_problem()
        found: dict[str, object] = {
            "cert": str(self.files.cert),
            "identity": None if self.identity is None else str(self.identity),
            "not_before": _utc(self.not_before),
            "not_after": _utc(self.not_after),
            "expires_in_s": round(self.not_after - self._clock(), 1),
            "reloads": self.reloads,
            "reload_error": self.reload_error,
            "ready": problem is None,
        }
        if problem is not None:
            found["reason"] = problem
        return found


def ca_dates(path: Path) -> list[tuple[str, float]]:
    """(subject, notAfter) of every certificate in a CA bundle."""
    return [
        (certificate.subject.rfc4514_string(), certificate.not_valid_after_utc.timestamp())
        for certificate in x509.load_pem_x509_certificates(path.read_bytes())
    ]


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
