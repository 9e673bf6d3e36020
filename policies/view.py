"""What one identity may do on one asset, compiled: the object the gateway asks for every decision.

A view holds the decision tables of the asset's protocol (Modbus tables by function code, EtherNet/IP
tables by (class, service), OPC UA tables by service), the asset's refusal codes, and the refusals that
depend on nothing but the request's key (built once: a scanner triggers them in bulk). Decisions that
need a rule's entries are taken by the tables (:mod:`policies.modbus.evaluate`, :mod:`policies.enip.evaluate`,
:mod:`policies.opcua.evaluate`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from policies.decision import ACTION_FORWARD, VERDICT_DENY, VERDICT_WOULD_DENY, Decision
from policies.enip.evaluate import EnipTable
from policies.enip.services import known_pair, service_text
from policies.enip.tags import RequestTag, parse_request_tag
from policies.modbus.evaluate import KeyTable, SubFunctionTable, function_text
from policies.model import Asset, Rule
from policies.opcua.evaluate import OpcuaTable, couple
from policies.opcua.services import GATEWAY_SERVICES
from protocols.enip.epath import PortSegment
from protocols.enip.requests import CipRequest
from protocols.enip.services import ForwardClose, ForwardOpen
from protocols.enip.spec import FIRST_CLASS_SPECIFIC_SERVICE, ClassCode, GeneralStatus
from protocols.modbus.pdu import Request
from protocols.opcua.operations import Operation
from protocols.opcua.services import SERVICES_BY_NAME

__all__ = ["SubjectView", "route_of"]

_CONSTANT_DENIALS = 1024
_CONNECTION_PAYLOADS = (ForwardOpen, ForwardClose)
_CONNECTION_MANAGER = int(ClassCode.CONNECTION_MANAGER)


def route_of(request: CipRequest) -> tuple[PortSegment, ...]:
    """Every hop a request travels past the device's address: the Unconnected Send routes around it
    and, for a Forward Open or Close, the route at the head of its connection path."""
    payload = request.payload
    if isinstance(payload, _CONNECTION_PAYLOADS):
        return request.route + payload.connection_path.route
    return request.route


def _route_text(route: tuple[PortSegment, ...]) -> str:
    return "/".join(str(hop) for hop in route) or "none"


class SubjectView:
    """What one identity may do on one asset, compiled. Build it with :meth:`policies.Policy.view`."""

    __slots__ = (
        "_codes",
        "_constant_denials",
        "_deny_action",
        "_enip_common",
        "_enip_every",
        "_enip_pairs",
        "_monitor_asset",
        "_opcua",
        "_opcua_paths",
        "_opcua_read",
        "_opcua_timeless",
        "_route",
        "_tables",
        "_unit_ids",
        "asset",
        "policy_revision",
        "rules",
        "subject",
    )

    def __init__(self, subject: str, asset: Asset, policy_revision: str, rules: tuple[Rule, ...]) -> None:
        self.subject = subject
        self.asset = asset
        self.policy_revision = policy_revision
        self.rules = rules  # every rule naming this asset for this subject, in file order
        self._unit_ids = asset.unit_ids
        self._route = asset.route
        self._monitor_asset = asset.mode == "monitor"
        self._deny_action = asset.deny.action
        self._codes = {
            "function": asset.deny.function,
            "address": asset.deny.address,
            "value": asset.deny.value,
            "unsupported": asset.deny.unsupported,
            "unit": asset.deny.unit,
        }
        self._tables: dict[int, KeyTable | SubFunctionTable] = {}
        self._enip_pairs: dict[tuple[int | None, int], EnipTable] = {}
        self._enip_common: dict[int, EnipTable] = {}
        self._enip_every: EnipTable | None = None
        self._opcua: dict[str, OpcuaTable] = {}
        self._opcua_read: OpcuaTable | None = None
        self._opcua_paths: frozenset[str] = frozenset()
        self._opcua_timeless: frozenset[str] = frozenset()
        # Refusals that depend only on the unit, function code, service or route (what a scanner
        # triggers in bulk) are built once; bounded, since a client picks the codes.
        self._constant_denials: dict[tuple[object, ...], Decision] = {}

    def install(self, tables: dict[int, KeyTable | SubFunctionTable]) -> None:
        """Called once by the compiler (tables refer back to the view, so they come after it)."""
        self._tables = tables

    def install_enip(
        self,
        pairs: dict[tuple[int | None, int], EnipTable],
        common: dict[int, EnipTable],
        every: EnipTable | None = None,
    ) -> None:
        """``pairs``: tables by (class, service); ``common``: common services named for any class;
        ``every``: the entries naming every service (``service = "*"``), for what no other table holds."""
        self._enip_pairs = pairs
        self._enip_common = common
        self._enip_every = every

    def install_opcua(self, tables: dict[str, OpcuaTable]) -> None:
        """``tables``: by service name (Part 4's spelling)."""
        self._opcua = tables
        read = self._opcua_read = tables.get("Read")
        paths = {service for service, table in tables.items() if table.has_paths}
        if read is not None and read.has_paths:
            # Monitored items and history reads are decided as Reads too.
            paths.update(service for service in tables if tables[service].coupled)
        self._opcua_paths = frozenset(paths)
        read_timeless = read is None or read.timeless
        self._opcua_timeless = frozenset(
            service
            for service, table in tables.items()
            if table.timeless and (read_timeless or not table.coupled)
        )

    # ------------------------------------------------------------------------------------ modbus

    def table(self, request: Request) -> KeyTable | None:
        """The table deciding this request's function code and sub-function (for explanations)."""
        table = self._tables.get(request.function_code)
        if isinstance(table, SubFunctionTable):
            return table.tables[bisect_right(table.starts, request.sub_function) - 1]
        return table

    def modbus_tables(self) -> tuple[frozenset[int], dict[int, KeyTable | SubFunctionTable]]:
        """The unit ids and the per-function-code tables :meth:`decide_modbus` consults: the compiled
        Modbus session decides a request of a known unit and function code with the table itself
        (compiled code calling compiled code), and leaves the rest to :meth:`decide_modbus`."""
        return self._unit_ids, self._tables

    def decide_modbus(self, request: Request, now: float) -> Decision:
        """Decide one parsed Modbus request at time ``now`` (epoch seconds)."""
        if request.unit_id not in self._unit_ids:
            return self.unit_refused(request)
        table = self._tables.get(request.function_code)
        if table is None:
            return self.no_rule(request)
        return table.decide(request, now)

    def no_rule(self, request: Request) -> Decision:
        key = (0, request.function_code, request.sub_function)
        decision = self._constant_denials.get(key)
        if decision is None:
            decision = self.deny(None, "function", f"no rule allows {function_text(request)}")
            self._remember(key, decision)
        return decision

    def unit_refused(self, request: Request) -> Decision:
        key = (1, request.unit_id)
        decision = self._constant_denials.get(key)
        if decision is None:
            units = ", ".join(str(u) for u in sorted(self._unit_ids))
            reason = (
                f"unit {request.unit_id} is not configured for asset {self.asset.name} (unit_ids {units})"
            )
            decision = self.deny(None, "unit", reason)
            self._remember(key, decision)
        return decision

    # -------------------------------------------------------------------------------------- enip

    def enip_table(self, request: CipRequest) -> EnipTable | None:
        """The table deciding this request's (class, service) pair."""
        service = request.service
        table = self._enip_pairs.get((request.class_id, service))
        if table is None and service < FIRST_CLASS_SPECIFIC_SERVICE:
            table = self._enip_common.get(service)
        return self._enip_every if table is None else table

    @staticmethod
    def request_tag(request: CipRequest) -> RequestTag | None:
        """The parts of the tag a request names by name (None for anything else)."""
        return None if request.tag is None else parse_request_tag(request.tag)

    def decide_enip(self, request: CipRequest, now: float) -> Decision:
        """Decide one request a client's message carries (after unwrapping, see
        :func:`protocols.enip.flatten`) at time ``now`` (epoch seconds)."""
        if request.error is not None:
            return self.unparsed(request)
        route = request.route
        if request.class_id == _CONNECTION_MANAGER:
            route = route_of(request)  # a Forward Open's connection path starts with its route
        if route and route != self._route:
            return self.route_refused(route)
        table = self._enip_pairs.get((request.class_id, request.service))
        if table is None:
            if request.service < FIRST_CLASS_SPECIFIC_SERVICE:
                table = self._enip_common.get(request.service)
            if table is None:
                table = self._enip_every
                if table is None:
                    return self.no_enip_rule(request)
        return table.decide(request, now)

    def no_enip_rule(self, request: CipRequest) -> Decision:
        key = (2, request.class_id, request.service)
        decision = self._constant_denials.get(key)
        if decision is None:
            service = service_text(request.class_id, request.service, request.name)
            if known_pair(request.class_id, request.service):
                decision = self.deny(None, "function", f"no rule allows {service}")
            else:
                decision = self.deny(None, "unsupported", f"{service} is not a service the gateway knows")
            self._remember(key, decision)
        return decision

    def route_refused(self, route: tuple[PortSegment, ...]) -> Decision:
        key = (3, route)
        decision = self._constant_denials.get(key)
        if decision is None:
            reason = (
                f"route {_route_text(route)} leads elsewhere than asset {self.asset.name}"
                f" (route {_route_text(self._route)})"
            )
            decision = self.deny(None, "address", reason)
            self._remember(key, decision)
        return decision

    def unparsed(self, request: CipRequest) -> Decision:
        """An embedded request that did not parse is never forwarded, whatever the asset's mode: the
        code is the codec's general status for it."""
        error = request.error
        assert error is not None
        status = error.general_status or GeneralStatus.INVALID_PARAMETER_VALUE
        # Always answered (never dropped or closed on): its siblings in a Multiple Service Packet run.
        return Decision(VERDICT_DENY, None, status, "exception", f"the request does not parse: {error}")

    # ------------------------------------------------------------------------------------- opcua

    def opcua_table(self, service: str) -> OpcuaTable | None:
        """The table deciding a service (for explanations)."""
        return self._opcua.get(service)

    def needs_browse_paths(self, service: str) -> bool:
        """Whether an entry that decides ``service`` names browse paths: only then is it worth the
        gateway's while to resolve an operation's path."""
        return service in self._opcua_paths

    def opcua_timeless(self, service: str) -> bool:
        """Whether this view decides an operation of ``service`` the same at any time (no entry that
        decides it has a time window; a service no entry names is refused at any time): the decision
        on an operation can be kept for the same operation under this view, with the same namespace
        array, and with no browse paths to resolve (:meth:`needs_browse_paths`)."""
        table = self._opcua.get(service)
        return table is None or service in self._opcua_timeless

    def decide_opcua_service(self, service: str, now: float) -> Decision:
        """Decide a request as a whole at time ``now``: a service without operations (CreateSubscription,
        Publish, DeleteSubscriptions, AddNodes, ...), or, for one with operations, whether any of them
        can be allowed (a refusal here is answered with a ServiceFault)."""
        table = self._opcua.get(service)
        if table is None:
            return self.no_opcua_rule(service)
        return table.decide_service(now)

    def decide_opcua(
        self,
        operation: Operation,
        namespaces: Sequence[str],
        now: float,
        browse_path: Sequence[str] | None = None,
    ) -> Decision:
        """Decide one operation of a request at time ``now``. ``namespaces`` is the device's namespace
        array (index -> URI); ``browse_path`` the browse names from below the Root down to the node the
        operation reaches (see :func:`policies.browse_path_of`), when :meth:`needs_browse_paths` says
        an entry uses them and the gateway could resolve it."""
        table = self._opcua.get(operation.service)
        if table is None:
            return self.no_opcua_rule(operation.service)
        decision = table.decide(operation, namespaces, now, browse_path)
        if not table.coupled:
            return decision
        read = self._opcua_read
        as_read = (
            self.no_opcua_rule("Read")
            if read is None
            else read.decide(operation, namespaces, now, browse_path)
        )
        return couple(decision, as_read, operation.service)

    def opcua_may(
        self,
        operation: Operation,
        namespaces: Sequence[str],
        now: float,
        browse_path: Sequence[str] | None = None,
    ) -> bool:
        """Whether some operation like ``operation`` could be allowed at ``now``, taking what it leaves
        open in the client's favour: the written value (a Write or Call without one), a Call's object
        (``node_id`` None), a node's or path's resolution. For what the gateway shows of the identity's
        rights - the CurrentWrite bit of UserAccessLevel, UserExecutable - never for deciding an
        operation: a real one is decided by :meth:`decide_opcua`, values and all."""
        if self._monitor_asset:
            return True  # nothing is refused on this asset
        table = self._opcua.get(operation.service)
        if table is None or not table.may(operation, namespaces, now, browse_path):
            return False
        read = self._opcua_read
        return not table.coupled or (read is not None and read.may(operation, namespaces, now, browse_path))

    def no_opcua_rule(self, service: str) -> Decision:
        key = (4, service)
        decision = self._constant_denials.get(key)
        if decision is None:
            shown = service if service.isprintable() and len(service) <= 64 else repr(service[:64])
            if service not in SERVICES_BY_NAME:
                decision = self.deny(None, "unsupported", f"{shown} is not a service the gateway knows")
            elif service in GATEWAY_SERVICES:
                decision = self.deny(
                    None, "function", f"{shown} is answered by the gateway itself, never forwarded"
                )
            else:
                decision = self.deny(None, "function", f"no rule allows {shown}")
            self._remember(key, decision)
        return decision

    # ------------------------------------------------------------------------------------ shared

    def deny(
        self, rule_id: str | None, kind: str, reason: str, monitor_rule_id: str | None = None
    ) -> Decision:
        """A refusal with the asset's code for ``kind`` (function, address, value, unsupported or unit)."""
        code = self._codes[kind]
        if self._monitor_asset:
            return Decision(VERDICT_WOULD_DENY, rule_id, code, ACTION_FORWARD, reason, monitor_rule_id)
        return Decision(VERDICT_DENY, rule_id, code, self._deny_action, reason, monitor_rule_id)

    def _remember(self, key: tuple[object, ...], decision: Decision) -> None:
        if len(self._constant_denials) < _CONSTANT_DENIALS:
            self._constant_denials[key] = decision
