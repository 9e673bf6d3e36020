"""Views that refuse every request on an asset, whatever the rules say: what a gateway enforces on an
asset it must close (its policy went stale past the limit the center set; later, a lock). A view that
lets reads through refuses every other request: what a gateway enforces while its audit trail cannot be
written (``[audit] on_failure = "closed"``), where an allowed read needs no record of its own.

A refusing view keeps the identity's access to the asset (a session still opens, so the client gets
its refusals in protocol terms instead of a vanished device) but decides every request with one
prepared refusal carrying the reason. It refuses on an asset in monitor mode too: closing an asset
means nothing reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.decision import VERDICT_DENY, Decision
from policies.modbus.evaluate import KeyTable, SubFunctionTable
from policies.view import SubjectView
from protocols.enip.requests import CipRequest
from protocols.modbus.pdu import Request
from protocols.modbus.spec import READ_FUNCTION_CODES
from protocols.opcua.operations import Operation

__all__ = ["RefusingView"]


class RefusingView(SubjectView):
    """``base``'s identity, asset and rules, deciding every request with one refusal for ``reason``.

    The code is the asset's code for a refused function or service (Modbus exception 0x01, CIP 0x0F,
    OPC UA BadUserAccessDenied unless the asset's ``deny`` says otherwise), the action the asset's deny
    action.
    """

    __slots__ = ("base", "reads", "refusal")

    def __init__(self, base: SubjectView, reason: str, *, reads: bool = False) -> None:
        super().__init__(base.subject, base.asset, base.policy_revision, base.rules)
        deny = base.asset.deny
        self.refusal = Decision(VERDICT_DENY, None, deny.function, deny.action, reason)
        self.base = base
        # Reads go on as the rules decide them (Modbus only so far; CIP and OPC UA refuse everything).
        self.reads = reads

    def modbus_tables(self) -> tuple[frozenset[int], dict[int, KeyTable | SubFunctionTable]]:
        # The Modbus session decides with these tables directly where it can: none here, so every
        # request comes to decide_modbus below, whatever a subclass of the base view installs.
        return frozenset(), {}

    def decide_modbus(self, request: Request, now: float) -> Decision:
        if self.reads and request.function_code in READ_FUNCTION_CODES:
            return self.base.decide_modbus(request, now)
        return self.refusal

    def decide_enip(self, request: CipRequest, now: float) -> Decision:
        return self.refusal

    def decide_opcua_service(self, service: str, now: float) -> Decision:
        return self.refusal

    def decide_opcua(
        self,
        operation: Operation,
        namespaces: Sequence[str],
        now: float,
        browse_path: Sequence[str] | None = None,
    ) -> Decision:
        return self.refusal

    def opcua_may(
        self,
        operation: Operation,
        namespaces: Sequence[str],
        now: float,
        browse_path: Sequence[str] | None = None,
    ) -> bool:
        return False

    def needs_browse_paths(self, service: str) -> bool:
        return False

    def opcua_timeless(self, service: str) -> bool:
        return True  # the same refusal at any time
