"""Certificate renewal for gateways and agents enrolled with a center.

At half of the validity its certificate had left when it was loaded (so, for a certificate loaded
when issued, at half-life), minus up to a fifth of that as jitter so that a fleet enrolled together
does not renew together, the renewer makes a new key, sends a CSR over mTLS with the current
certificate (``POST /v1/renew``), writes key, certificate and CA bundle into the credentials folder
and reloads the TLS material: new handshakes present the new certificate, live sessions keep theirs.

A failed renewal is retried with exponential back-off (1 s doubling to ``max_retry_s``) and shows at
once: :meth:`Renewer.status` (``/readyz``) has ``overdue`` set and the last error, the metrics count
failures, and the audit has ``certificate_renewal_failed``. Renewing is never given up: a certificate
that expires anyway ends the host's sessions, and the host has to enroll again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509

from gateway.audit import AuditLog
from gateway.center.client import CenterClient, CenterError
from gateway.credentials import Credentials, make_csr
from gateway.tls import TlsMaterial

log = logging.getLogger("ztgate.renewal")

__all__ = ["Renewer"]


class Renewer:
    def __init__(
        self,
        credentials: Credentials,
        materials: Sequence[TlsMaterial[Any]],
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        max_retry_s: float = 300.0,
    ) -> None:
        if not materials:
            raise ValueError("nothing to renew: no TLS material")
        self.credentials = credentials
        self.materials = list(materials)
        self._audit = audit
        self._clock = clock
        self._jitter = jitter
        self._max_retry_s = max_retry_s
        self.renewals = 0
        self.failures = 0  # consecutive failures of the renewal due now
        self.failures_total = 0
        self.last_error: str | None = None
        self.renew_at = self._schedule()
        self._wake = asyncio.Event()

    @property
    def not_after(self) -> float:
        return self.materials[0].not_after

    def _schedule(self) -> float:
        material = self.materials[0]
        left_s = max(0.0, material.not_after - material.loaded_at)
        return material.loaded_at + left_s * (0.5 - 0.1 * self._jitter())

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "renew_at": _utc(self.renew_at),
            "renew_in_s": round(self.renew_at - now, 1),
            "overdue": self.failures > 0,  # it was due, and has not succeeded since
            "failures": self.failures,
            "last_error": self.last_error,
            "renewals": self.renewals,
        }

    def due_now(self) -> None:
        """Renew at once (an operator's request, or a CA rotation that cannot wait)."""
        self.renew_at = self._clock()
        self._wake.set()

    async def run(self) -> None:
        """Renew whenever due, until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.renew_at - self._clock()))
            except TimeoutError:
                pass
            self._wake.clear()
            if self._clock() < self.renew_at:
                continue
            try:
                await self.renew()
            except (CenterError, OSError, ValueError) as exc:
                self._failed(str(exc))

    async def renew(self) -> None:
        info = self.credentials.center()
        key, csr = make_csr(info.id)
        async with CenterClient.for_credentials(self.credentials) as client:
            answer = await client.call("POST", "/v1/renew", {"csr": csr})
        certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        if certificate.public_key() != key.public_key():
            raise ValueError("the center returned a certificate for another key")
        self.credentials.replace_certificate(key, str(answer["certificate"]), str(answer["ca"]))
        for material in self.materials:
            material.reload("renewal")
        self.renewals += 1
        self.failures = 0
        self.last_error = None
        self.renew_at = self._schedule()
        log.info(
            "certificate renewed: valid until %s, next renewal %s", _utc(self.not_after), _utc(self.renew_at)
        )
        if self._audit is not None:
            self._audit.emit(
                {
                    "event": "certificate_renewed",
                    "identity": info.id,
                    "serial": f"{certificate.serial_number:x}",
                    "not_after": _utc(self.not_after),
                }
            )

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.failures_total += 1
        self.last_error = error
        retry_s = min(self._max_retry_s, 2.0 ** (self.failures - 1))
        self.renew_at = self._clock() + retry_s * (0.8 + 0.2 * self._jitter())
        log.warning(
            "certificate renewal failed (%d in a row), retrying in %.1f s: %s", self.failures, retry_s, error
        )
        if self._audit is not None:
            self._audit.emit(
                {
                    "event": "certificate_renewal_failed",
                    "identity": self.credentials.center().id,
                    "error": error,
                    "failures": self.failures,
                    "not_after": _utc(self.not_after),
                }
            )


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
