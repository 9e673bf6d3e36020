"""Proof of renewal: a live session outlives the certificate it was opened with.

A gateway ends a session when the client certificate it was opened with expires (continuous
validation). A renewed certificate cannot be slipped under a live TLS connection, so after each
renewal (or reload) the agent proves the new certificate to every gateway it has sessions with: one
short mTLS handshake presenting it, with the reserved ALPN value :data:`RENEWAL_ALPN` instead of an
asset. The gateway accepts the proof only as OpenSSL verified it (chain to the CA in force, validity
period) from a client identity (user, vendor, agent), and moves the end of that identity's live
sessions from the same source address to the new certificate's notAfter — only sessions the policy
in force still grants (a locked-out identity extends nothing; revalidation ends those), and never
earlier than they already end. A proof for another identity touches nothing of this one: sessions
are matched by SPIFFE id, and by source, so a copy of an old certificate in use elsewhere is not
kept alive by its owner's renewals. The
gateway answers with one JSON object (sessions extended, the new end) and closes; each proof is
audited (``renewal_proved``).

The gateway also remembers the newest proven notAfter per identity and source, so a session whose
handshake with the old certificate was still under way when the proof arrived ends at the proven
time as well.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import orjson

from gateway.runtime import Runtime
from gateway.tls import RENEWAL_ALPN, certificate_not_after

log = logging.getLogger("ztgate.renewal")

__all__ = ["RENEWAL_ALPN", "ProvenCertificates", "prove_renewal"]

MAX_ANSWER_BYTES = 4096
# Proven ends remembered for sessions still to come; beyond this, a proof extends live sessions only.
MAX_REMEMBERED = 100_000


class ProvenCertificates:
    """The gateway's side: proofs received, live sessions extended."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        # (identity, source) -> newest proven notAfter, until it passes
        self._not_after: dict[tuple[str, str], float] = {}

    def session_end(self, identity: str, source: str, not_after: float | None) -> float | None:
        """When a new session of ``identity`` from ``source`` whose certificate ends at ``not_after``
        should end."""
        proven = self._not_after.get((identity, source))
        if not_after is None or proven is None or proven <= not_after:
            return not_after
        return proven

    def prove(self, transport: asyncio.Transport, identity: str, source: str, peer: str) -> None:
        """A verified proof handshake by ``identity`` from ``source``: extend, audit, answer, close."""
        ssl_object = transport.get_extra_info("ssl_object")
        not_after = certificate_not_after(ssl_object)
        serial = str((ssl_object.getpeercert() or {}).get("serialNumber", "")).lower()
        extended: list[str] = []
        if not_after is not None:
            self._remember((identity, source), not_after)
            policy = self._runtime.policies.current
            extended = [
                session.id
                for session in self._runtime.sessions
                if session.extend_certificate(identity, source, not_after, policy)
            ]
        answer: dict[str, Any] = {
            "identity": identity,
            "extended": len(extended),
            "not_after": None if not_after is None else _utc(not_after),
        }
        self._runtime.audit.emit(
            {
                "event": "renewal_proved",
                "identity": identity,
                "peer": peer,
                "serial": serial,
                "not_after": answer["not_after"],
                "sessions": extended,
            }
        )
        transport.write(orjson.dumps(answer))
        transport.close()

    def _remember(self, key: tuple[str, str], not_after: float) -> None:
        now = self._runtime.clock()
        # Forget what has passed: one entry per identity with a valid certificate and source it proved from.
        for passed in [k for k, until in self._not_after.items() if until <= now]:
            del self._not_after[passed]
        if key not in self._not_after and len(self._not_after) >= MAX_REMEMBERED:
            return
        if not_after > self._not_after.get(key, 0.0):
            self._not_after[key] = not_after


async def prove_renewal(host: str, port: int, context: ssl.SSLContext, timeout_s: float) -> dict[str, Any]:
    """The agent's side: present the certificate of ``context`` (offering :data:`RENEWAL_ALPN`) to the
    gateway at host:port; returns the gateway's answer. Raises OSError, ssl.SSLError, TimeoutError or
    ValueError (an answer that is not one)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, ssl_handshake_timeout=timeout_s), timeout_s
    )
    try:
        raw = await asyncio.wait_for(reader.read(MAX_ANSWER_BYTES), timeout_s)
    finally:
        writer.close()
    if not raw:
        raise ValueError("the gateway closed the proof without an answer (an identity it refuses)")
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the gateway's answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise ValueError("the gateway's answer is not a JSON object")
    return answer


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
