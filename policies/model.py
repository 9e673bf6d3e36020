"""The validated policy: assets, groups and rules as typed, immutable values.

The loader builds these only from input it has checked, so everything downstream (compiler,
evaluator, explanations, the reference evaluator in the tests) can rely on their invariants: ids are
in the trust domain, group references resolve, rule ids are unique, FC 8/43 entries list their
sub-functions, EtherNet/IP entries name services with their class, OPC UA entries name nodes by namespace
URI, every range is inside its field's bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from policies.enip.services import ServiceKey, describe_keys, hex_ranges
from policies.enip.tags import TagPattern
from policies.opcua.nodes import MethodPair, NodePattern
from policies.opcua.paths import BrowsePathPrefix
from policies.opcua.services import attribute_text
from policies.ranges import IntervalSet
from policies.timewindow import Window
from policies.values import ValueBounds
from protocols.enip.epath import PortSegment
from protocols.opcua.spec import Status

__all__ = [
    "DENY_ACTIONS",
    "EFFECTS",
    "ENIP_DENY",
    "EVERY_FUNCTION_CODE",
    "MODBUS_DENY",
    "MODES",
    "ON_DESYNC",
    "ON_STALE",
    "OPCUA_DENY",
    "OPCUA_PORT",
    "PROTOCOLS",
    "SCOPES",
    "SUBFUNCTION_CODES",
    "TEST_EXPECTATIONS",
    "Asset",
    "DenyAction",
    "EnipEntry",
    "EnipIdentity",
    "ModbusEntry",
    "OpcUaUser",
    "OpcuaEntry",
    "PolicyModel",
    "PolicyTest",
    "Rule",
    "VendorAccess",
]

PROTOCOLS = ("modbus", "enip", "opcua")
MODES = ("enforce", "monitor")
# A reply under another id to a link's only request in flight: close the link and open a new one (the
# device's stream is out of step), or keep it and wait for what comes next.
ON_DESYNC = ("reconnect", "wait")
# What an asset does when the gateway's policy has gone stale (no word from the center for longer than
# max_staleness_s): refuse every request, or keep enforcing the last verified policy.
ON_STALE = ("closed", "static")
EFFECTS = ("allow", "deny")
# A rule decides requests, or (deny rules only) whole sessions: an identity's sessions to the rule's
# assets are refused at the handshake and cut when the rule arrives.
SCOPES = ("request", "session")
DENY_ACTIONS = ("exception", "drop", "close")
# FC 8 (Diagnostics) and FC 43 (Encapsulated Interface Transport) are decided per sub-function / MEI
# type: their sub-functions range from harmless counters to "force listen-only mode".
SUBFUNCTION_CODES = frozenset((8, 43))
EVERY_FUNCTION_CODE = frozenset(range(1, 128))  # fc = "*" (128..255 are exception responses)


@dataclass(frozen=True, slots=True)
class DenyAction:
    """How a refusal looks on the wire, and the code answered for each kind of refusal: a Modbus
    exception code, a CIP general status on an EtherNet/IP asset, an OPC UA StatusCode (uint32) on an
    OPC UA asset. ``function`` is for a refused function code or service, ``address`` for a refused
    target (unit, addresses; tag, class, instance, attribute, route; node, attribute, method), ``value``
    for a written value out of bounds, ``unsupported`` (EtherNet/IP, OPC UA) for a service the
    gateway does not know, and ``unit`` (Modbus) for a unit id the asset does not have."""

    action: str = "exception"
    function: int = 1
    address: int = 2
    value: int = 3
    unsupported: int = 1
    unit: int = 0x0A  # Modbus only: a unit id the asset does not have (gateway path unavailable)


MODBUS_DENY = DenyAction()
# CIP general status 0x0F "privilege violation" for every refusal, 0x08 "service not supported" for a
# (class, service) pair the gateway has no name for.
ENIP_DENY = DenyAction("exception", 0x0F, 0x0F, 0x0F, 0x08)
# BadUserAccessDenied (0x801F0000) per refused operation or service, BadServiceUnsupported (0x800B0000)
# for a service the gateway does not know.
OPCUA_DENY = DenyAction(
    "exception",
    Status.BAD_USER_ACCESS_DENIED,
    Status.BAD_USER_ACCESS_DENIED,
    Status.BAD_USER_ACCESS_DENIED,
    Status.BAD_SERVICE_UNSUPPORTED,
)
OPCUA_PORT = 4840


@dataclass(frozen=True, slots=True)
class OpcUaUser:
    """The user token the gateway activates its upstream sessions with: ``anonymous``, ``username``
    (with the file holding the password, read by the gateway) or ``certificate`` (the gateway's
    application certificate as an X509 user token)."""

    kind: str = "anonymous"
    username: str | None = None
    password_file: str | None = None

    def __str__(self) -> str:
        if self.kind == "username":
            return f"username {self.username}"
        return self.kind


@dataclass(frozen=True, slots=True)
class EnipIdentity:
    """What the gateway answers a ListIdentity with, in the device's place (the device stays cloaked).
    The defaults describe no product in particular: a keyable generic device."""

    vendor_id: int = 1
    device_type: int = 0x2B  # "Generic Device (keyable)"
    product_code: int = 1
    revision_major: int = 1
    revision_minor: int = 1
    serial: int = 0
    product_name: str = "EtherNet/IP Device"

    @property
    def revision(self) -> str:
        """As the policy spells it: ``"20.11"``."""
        return f"{self.revision_major}.{self.revision_minor}"


@dataclass(frozen=True, slots=True)
class Asset:
    """A device behind the gateway. Equal when every setting is; hashed by name (``unit_map`` is a
    read-only mapping, which cannot be hashed)."""

    name: str
    protocol: str
    upstream_host: str
    upstream_port: int
    unit_ids: frozenset[int] = frozenset((1,))  # Modbus
    unit_map: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))  # Modbus
    mode: str = "enforce"
    deny: DenyAction = MODBUS_DENY  # ENIP_DENY for an EtherNet/IP asset
    on_stale: str = "closed"  # see ON_STALE; only a gateway fed by a center goes stale
    max_connections: int = 1  # Modbus: TCP connections; EtherNet/IP: CIP class-3 connections
    max_in_flight: int = 1  # Modbus
    queue_limit: int = 64
    connect_timeout_s: float = 3.0
    response_timeout_s: float = 2.0
    # Modbus and EtherNet/IP: how long a request may wait, from the moment the gateway read it, before it
    # must be on its way to the device (below the 0.5 s many clients give up after), and what a link
    # does when the device answers out of step (see ON_DESYNC).
    queue_timeout_s: float = 0.4
    on_desync: str = "reconnect"
    # Modbus: answer a session's requests in the order they came (refusals wait for earlier replies).
    preserve_order: bool = False
    # EtherNet/IP only.
    max_sessions: int = 1  # encapsulation sessions (TCP connections) to the device
    connection_size: int = 511  # bytes per class-3 connection the gateway opens (and grants its clients)
    large_forward_open: bool = False
    route: tuple[PortSegment, ...] = ()  # the route from the device's address to the CPU, e.g. 1/0
    identity: EnipIdentity = EnipIdentity()
    # OPC UA only (max_sessions: upstream sessions at once, one per client session).
    endpoint_path: str = ""  # what follows host:port in the device's endpoint URL, e.g. "/plant"
    security_policy: str = "None"  # "None" or "Basic256Sha256"
    security_mode: str = "None"  # "None", "Sign" or "SignAndEncrypt"
    user: OpcUaUser = OpcUaUser()
    application_cert: str | None = None  # the gateway's upstream application certificate (a file)
    application_key: str | None = None
    # The device's application certificate (a file): pinned, instead of the one its endpoint offers.
    device_cert: str | None = None

    @property
    def endpoint_url(self) -> str:
        """OPC UA: the device's endpoint, ``opc.tcp://host:port/path``."""
        host = f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
        return f"opc.tcp://{host}:{self.upstream_port}{self.endpoint_path}"

    def __hash__(self) -> int:
        return hash(self.name)

    def device_unit(self, unit: int) -> int:
        """The unit id to use towards the device for a client's unit id."""
        return self.unit_map.get(unit, unit)


@dataclass(frozen=True, slots=True)
class ModbusEntry:
    """One ``modbus = [...]`` entry. ``None`` means the entry does not name that field."""

    function_codes: frozenset[int]
    subfunctions: IntervalSet | None = None
    units: IntervalSet | None = None
    addresses: IntervalSet | None = None
    files: IntervalSet | None = None
    values: IntervalSet | None = None

    def describe(self) -> str:
        """The entry in policy-like notation, for explanations."""
        every = self.function_codes == EVERY_FUNCTION_CODE
        parts = ["fc *" if every else "fc " + ", ".join(str(fc) for fc in sorted(self.function_codes))]
        for name, ranges in (
            ("subfunction", self.subfunctions),
            ("unit", self.units),
            ("address", self.addresses),
            ("file", self.files),
            ("value", self.values),
        ):
            if ranges is not None:
                parts.append(f"{name} {ranges}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class EnipEntry:
    """One ``enip = [...]`` entry. ``services`` are (class or None for any class, service) keys;
    ``None`` fields are not named by the entry. ``preset`` is kept for explanations."""

    services: frozenset[ServiceKey]
    classes: IntervalSet | None = None
    instances: IntervalSet | None = None
    attributes: IntervalSet | None = None
    tags: tuple[TagPattern, ...] | None = None
    values: ValueBounds | None = None
    preset: str | None = None
    named_services: frozenset[ServiceKey] = frozenset()  # those given in ``service``, not by the preset
    every_service: bool = False  # service = "*": every service on every class; ``services`` is empty

    def describe(self) -> str:
        """The entry in policy-like notation, for explanations."""
        parts = []
        if self.every_service:
            parts.append("service *")
        if self.preset is not None:
            parts.append(f"preset {self.preset}")
        if not self.every_service and (self.named_services or self.preset is None):
            parts.append("service " + describe_keys(self.named_services or self.services))
        for name, field_value in (
            ("class", None if self.classes is None else hex_ranges(self.classes)),
            ("instance", self.instances),
            ("attribute", self.attributes),
            ("tag", None if self.tags is None else ", ".join(str(tag) for tag in self.tags)),
            ("value", self.values),
        ):
            if field_value is not None:
                parts.append(f"{name} {field_value}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class OpcuaEntry:
    """One ``opcua = [...]`` entry. ``services`` are Part 4 service names, from ``service``,
    ``service_set`` and ``preset`` together; ``None`` fields are not named by the entry."""

    services: frozenset[str]
    nodes: tuple[NodePattern, ...] | None = None
    browse_paths: tuple[BrowsePathPrefix, ...] | None = None
    attributes: frozenset[int] | None = None
    methods: tuple[MethodPair, ...] | None = None
    values: ValueBounds | None = None
    preset: str | None = None
    service_sets: tuple[str, ...] = ()
    named_services: frozenset[str] = frozenset()  # those given in ``service``
    every_service: bool = False  # service = "*"

    @property
    def per_operation(self) -> bool:
        """Whether the entry names a field decided per operation (so it says nothing about a whole
        request)."""
        return not (
            self.nodes is None
            and self.browse_paths is None
            and self.attributes is None
            and self.methods is None
            and self.values is None
        )

    def describe(self) -> str:
        """The entry in policy-like notation, for explanations."""
        parts = []
        if self.preset is not None:
            parts.append(f"preset {self.preset}")
        if self.service_sets:
            parts.append("service_set " + ", ".join(self.service_sets))
        if self.every_service:
            parts.append("service *")
        elif self.named_services or (self.preset is None and not self.service_sets):
            parts.append("service " + ", ".join(sorted(self.named_services or self.services)))
        for name, field_value in (
            ("node", None if self.nodes is None else ", ".join(str(p) for p in self.nodes)),
            ("browse_path", None if self.browse_paths is None else ", ".join(map(str, self.browse_paths))),
            (
                "attribute",
                None if self.attributes is None else ", ".join(map(attribute_text, sorted(self.attributes))),
            ),
            ("method", None if self.methods is None else "; ".join(str(m) for m in self.methods)),
            ("value", self.values),
        ):
            if field_value is not None:
                parts.append(f"{name} {field_value}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One ``[[rules]]`` table. ``index`` is its position in the file (0-based)."""

    index: int
    id: str
    subjects: tuple[str, ...]
    assets: tuple[str, ...]  # asset names, or ("*",) for every asset
    effect: str = "allow"
    mode: str = "enforce"
    description: str = ""
    window: Window | None = None
    modbus: tuple[ModbusEntry, ...] = ()
    enip: tuple[EnipEntry, ...] = ()
    opcua: tuple[OpcuaEntry, ...] = ()
    scope: str = "request"


TEST_EXPECTATIONS = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """One ``[[tests]]`` table: a promise the site wrote down, checked against every revision.

    ``request`` holds ``ztgate policy explain``'s options (``fc``, ``address``, ``value``, ``service``,
    ``tag``, ``node``...) as the file gives them; :mod:`gateway.policy_tests` builds and decides it.
    """

    index: int
    name: str
    subject: str
    asset: str
    request: Mapping[str, object]
    expect: str
    rule: str | None = None  # the rule that must decide, if given
    at: str | None = None  # ISO 8601 with an offset; default: when the tests run


@dataclass(frozen=True, slots=True)
class VendorAccess:
    """``[vendor_access]``: what a vendor may ask for as a just-in-time grant (gateway/center/grants.py).

    ``subjects`` may ask; ``assets`` may be asked for; each operation asked for must lie inside the
    entries of its asset's protocol (``modbus``, ``enip``, ``opcua``); a grant lasts at most
    ``max_window_s``; ``approvers`` people other than the vendor must approve it."""

    subjects: tuple[str, ...]
    assets: tuple[str, ...]
    max_window_s: float
    approvers: int = 1
    modbus: tuple[ModbusEntry, ...] = ()
    enip: tuple[EnipEntry, ...] = ()
    opcua: tuple[OpcuaEntry, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class PolicyModel:
    trust_domain: str
    assets: Mapping[str, Asset]
    groups: Mapping[str, tuple[str, ...]]
    rules: tuple[Rule, ...]
    tests: tuple[PolicyTest, ...] = ()
    vendor_access: VendorAccess | None = None
