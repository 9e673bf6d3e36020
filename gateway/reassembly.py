"""The gateway's one budget for messages not yet complete: the bytes every session together holds for
chunked messages whose final chunk has not come (OPC UA's partial messages). A session charges what its
codec holds after each read and gives it back when the message completes or the session ends; the codec
refuses a chunk that would take the total past the limit (``room``), so the total never exceeds it,
however many sessions send chunks and never the last one."""

from __future__ import annotations

DEFAULT_REASSEMBLY_BUDGET_MIB = 64.0
MIB = 1024 * 1024


class ReassemblyBudget:
    """Bytes held for partial messages across all sessions, within ``limit_bytes``."""

    __slots__ = ("held_bytes", "limit_bytes", "peak_bytes", "refused")

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"reassembly budget {limit_bytes} bytes: must not be negative")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.peak_bytes = 0  # the most ever held at once, for /metrics and tests
        self.refused = 0  # sessions closed because their next chunk did not fit

    def room(self, held_bytes: int) -> int:
        """How much a session that already holds ``held_bytes`` may hold in all."""
        return max(0, self.limit_bytes - self.held_bytes) + held_bytes

    def charge(self, before_bytes: int, after_bytes: int) -> int:
        """A session's holding went from ``before_bytes`` to ``after_bytes``; returns ``after_bytes``."""
        held = self.held_bytes = self.held_bytes + after_bytes - before_bytes
        self.peak_bytes = max(self.peak_bytes, held)
        return after_bytes


__all__ = ["DEFAULT_REASSEMBLY_BUDGET_MIB", "MIB", "ReassemblyBudget"]
