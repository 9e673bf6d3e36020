"""What the gateway does about the state of its audit trail: ``/readyz``, metrics, and ``on_failure``.

With ``[audit] on_failure = "closed"`` (the default), while a record emitted now would not be written (a
sink failing, a full spool that cannot make room, the audit queue over its limit), every asset refuses
each request but an allowed read, in the protocol's own terms, with the reason ``audit trail cannot be
written``: Modbus reads (function codes 1-4) go on as the rules decide them and are aggregated as usual;
every other Modbus request, and every CIP and OPC UA request, is refused. When the trail is writable
again the policy in force is restored. With ``"open"`` traffic goes on and the losses are only counted.

A full spool under ``on_spool_full = "block_new_sessions"`` also refuses new sessions (the overlay asks
:attr:`gateway.audit.AuditLog.blocks_new_sessions`), whatever ``on_failure`` says.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Final

from gateway.audit import AuditLog
from gateway.runtime import Runtime

__all__ = ["AUDIT_UNAVAILABLE", "ON_FAILURE", "guard_audit", "watch_audit"]

log = logging.getLogger(__name__)

ON_FAILURE: Final = ("closed", "open")
AUDIT_UNAVAILABLE: Final = "audit trail cannot be written"
CHECK_INTERVAL_S: Final = 0.05


def watch_audit(runtime: Runtime, audit: AuditLog) -> None:
    """The audit trail in /readyz (not ready while records cannot be written) and in the metrics."""
    runtime.status["audit"] = audit.status
    metrics = runtime.metrics
    metrics.gauges["ztgate_audit_queued"] = lambda: float(audit.queued)
    metrics.gauges["ztgate_audit_healthy"] = lambda: float(audit.healthy)
    metrics.counters["ztgate_audit_dropped"] = lambda: float(audit.dropped)

    def dropped_by_kind() -> Iterator[tuple[tuple[str, ...], float]]:
        for kind, count in audit.dropped_by_kind().items():
            yield (kind,), float(count)

    def spool_bytes() -> Iterator[tuple[tuple[str, ...], float]]:
        for sink in audit.sinks:
            spool = getattr(sink, "spool", None)
            if spool is not None:
                yield (sink.name,), float(spool.pending_bytes)

    def sink_dropped() -> Iterator[tuple[tuple[str, ...], float]]:
        for sink in audit.sinks:
            for kind, count in sink.dropped.items():
                yield (sink.name, kind), float(count)

    def refusals_by_rule() -> Iterator[tuple[tuple[str, ...], float]]:
        for (rule, decision), count in list(audit.refusals_by_rule.items()):
            yield (rule, decision), float(count)

    metrics.labeled["ztgate_refusals_by_rule"] = ("counter", ("rule", "decision"), refusals_by_rule)
    metrics.labeled["ztgate_audit_dropped_by_kind"] = ("counter", ("kind",), dropped_by_kind)
    metrics.labeled["ztgate_audit_sink_dropped"] = ("counter", ("sink", "kind"), sink_dropped)
    metrics.labeled["ztgate_audit_spool_bytes"] = ("gauge", ("sink",), spool_bytes)


async def guard_audit(runtime: Runtime, audit: AuditLog, on_failure: str) -> None:
    """Enforce ``on_failure`` as the audit trail's state changes. Runs until cancelled."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {', '.join(ON_FAILURE)}")
    closed = False
    while True:
        healthy = audit.healthy
        if healthy == closed:  # a change: closed and healthy, or open and failing
            closed = not healthy
            if on_failure == "closed":
                runtime.policies.set_reads_only(None if healthy else AUDIT_UNAVAILABLE)
            if closed:
                what = "refusing every request but allowed reads" if on_failure == "closed" else "going on"
                log.warning("audit trail cannot be written: %s (on_failure = %s)", what, on_failure)
            else:
                log.warning("audit trail writable again")
        await asyncio.sleep(CHECK_INTERVAL_S)
