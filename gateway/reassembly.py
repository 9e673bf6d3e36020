"""The gateway's one budget for messages not yet complete: the bytes every session together holds for
chunked messages whose final chunk has not come (OPC UA's partial messages). A session charges what its
codec holds after each read and gives it back when the message completes or the session ends; the codec
refuses a chunk that would take the total past the limit (``room``), so the total never exceeds it,
however many sessions send chunks and never the last one.

What the budget held goes back to the C library when it is freed, but glibc keeps freed heap pages
mapped: after an attack that filled the budget the gateway's RSS would stay at its peak for good. So
once the budget is empty again after at least ``TRIM_AFTER_RELEASED_BYTES`` were given back, the
gateway asks glibc to return its free pages (``malloc_trim``), a moment later so that the closed
channels' buffers go too. Rare by construction: ordinary traffic never holds a partial message that
long, and a C library without ``malloc_trim`` is simply not asked."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

DEFAULT_REASSEMBLY_BUDGET_MIB = 64.0
MIB = 1024 * 1024
TRIM_AFTER_RELEASED_BYTES = 8 * MIB
TRIM_DELAY_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, if the C library this process runs on has one."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class ReassemblyBudget:
    """Bytes held for partial messages across all sessions, within ``limit_bytes``."""

    __slots__ = (
        "_released_bytes",
        "_trim",
        "held_bytes",
        "limit_bytes",
        "peak_bytes",
        "refused",
        "trim_scheduled",
        "trims",
    )

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"reassembly budget {limit_bytes} bytes: must not be negative")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.peak_bytes = 0  # the most ever held at once, for /metrics and tests
        self.refused = 0  # sessions closed because their next chunk did not fit
        self.trims = 0  # times free heap pages were given back to the system
        self._released_bytes = 0  # given back since the last trim
        self._trim = _malloc_trim()
        self.trim_scheduled = False

    def room(self, held_bytes: int) -> int:
        """How much a session that already holds ``held_bytes`` may hold in all."""
        return max(0, self.limit_bytes - self.held_bytes) + held_bytes

    def charge(self, before_bytes: int, after_bytes: int) -> int:
        """A session's holding went from ``before_bytes`` to ``after_bytes``; returns ``after_bytes``."""
        held = self.held_bytes = self.held_bytes + after_bytes - before_bytes
        self.peak_bytes = max(self.peak_bytes, held)
        if after_bytes < before_bytes:
            self._released_bytes += before_bytes - after_bytes
            if not held and self._released_bytes >= TRIM_AFTER_RELEASED_BYTES and not self.trim_scheduled:
                self.trim_scheduled = True
                asyncio.get_running_loop().call_later(TRIM_DELAY_S, self.release_free_memory)
        return after_bytes

    def release_free_memory(self) -> None:
        """Give the C library's free heap pages back to the system (glibc; elsewhere nothing)."""
        self.trim_scheduled = False
        self._released_bytes = 0
        if self._trim is not None:
            self._trim(0)
            self.trims += 1


__all__ = ["DEFAULT_REASSEMBLY_BUDGET_MIB", "MIB", "ReassemblyBudget"]
