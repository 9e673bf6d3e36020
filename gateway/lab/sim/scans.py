"""The simulators' scan cycle: the plant steps on a fixed period, as a PLC's scan does."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_scans(interval_s: float, step: Callable[[], Awaitable[None] | None]) -> None:
    """Call ``step`` (a function, or a coroutine function) every ``interval_s`` until cancelled. A step
    that raises is logged and ends the scans: the process values stay frozen, the server goes on."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        # Scheduled against the clock so the scan rate does not drift; no catch-up burst after a stall.
        due = max(due + interval_s, loop.time())
        await asyncio.sleep(due - loop.time())
        try:
            stepped = step()
            if inspect.isawaitable(stepped):
                await stepped
        except Exception:
            log.exception("plant scan failed; the process values stay frozen")
            return


__all__ = ["run_scans"]
