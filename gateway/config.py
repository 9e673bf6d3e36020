"""Configuration files of the gateway and the agent (TOML), checked like policy files: every
problem is reported at once, with the file, the line and the field path.

Relative paths in a file are relative to the file's own folder, so a lab folder can be moved whole.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

from gateway.admission import DEFAULT_MAX_SESSIONS_PER_IDENTITY, HandshakeLimits
from gateway.audit_formats import FORMATS
from gateway.policy_store import DEFAULT_QUIET_S
from gateway.reassembly import DEFAULT_REASSEMBLY_BUDGET_MIB
from gateway.sinks import SinkSettings
from gateway.sinks.build import SINK_TYPES
from gateway.sinks.spool import ON_FULL_POLICIES
from gateway.sinks.syslog import FACILITIES, TRANSPORTS, SyslogSettings
from policies import toml
from policies.errors import PolicyError, PolicyIssue, format_path, syntax_issue
from policies.fields import FieldChecker, expected
from policies.locator import LineLocator
from policies.spiffe import IdentityError, parse_spiffe_id


class ConfigError(PolicyError):
    """A configuration file was refused; ``issues`` lists every problem, in file order."""


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port``. Raises ValueError with a message for the user."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r}: expected host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or default_host, port


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class CenterSettings:
    """A gateway's or agent's ``[center]``: its credentials folder (``ztgate enroll --dir``), from
    which it renews its certificate and, for a gateway, takes its policy."""

    credentials: Path
    max_staleness_s: float = 86400.0
    startup_timeout_s: float = 300.0
    receive_timeout_s: float = 30.0
    renew: bool = True

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(
            self.credentials / "cert.pem", self.credentials / "key.pem", self.credentials / "ca.pem"
        )


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    name: str
    listen: tuple[str, int]
    policy: Path | None  # None: from the center
    policy_quiet_s: float  # a policy file changed in place is loaded after this long unchanged
    tls: TlsFiles
    loop: str  # "uvloop" | "asyncio"
    max_sessions: int
    client_max_in_flight: int
    client_idle_timeout_s: float
    admin_listen: tuple[str, int] | None
    audit_sinks: tuple[SinkSettings, ...]
    audit_aggregate_reads_s: float
    audit_queue_limit: int
    audit_on_failure: str  # "closed" | "open"
    overlay: HandshakeLimits
    center: CenterSettings | None = None
    client_local_answers_per_s: float = 1000.0
    identity_local_answers_per_s: float = 2000.0
    client_refusal_audit_interval_s: float = 1.0
    reassembly_budget_mib: float = DEFAULT_REASSEMBLY_BUDGET_MIB
    reassembly_timeout_s: float = 30.0
    max_sessions_per_identity: int = DEFAULT_MAX_SESSIONS_PER_IDENTITY


@dataclass(frozen=True)
class AgentListener:
    listen: tuple[str, int]
    asset: str
    gateway: tuple[str, int]
    protocol: str | None
    # The gateway's SPIFFE id, pinned; None: derived from the gateway's host name (gateway/agent.py).
    gateway_id: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    source: Path
    tls: TlsFiles
    listeners: tuple[AgentListener, ...]
    connect_timeout_s: float
    center: CenterSettings | None = None
    allow_remote: bool = False  # listeners may be on addresses other hosts reach
    admin_listen: tuple[str, int] | None = None  # /healthz, /readyz, /metrics; None: off


def is_loopback(host: str) -> bool:
    """Whether only this host can reach ``host`` (an address literal or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


class ConfigChecker(FieldChecker):
    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base

    def section(self, doc: dict[str, object], key: str, allowed: tuple[str, ...]) -> dict[str, object]:
        if key not in doc:
            return {}
        table = self.table(doc[key], (key,))
        if table is None:
            return {}
        self.keys(table, (key,), allowed)
        return table

    def path(
        self, table: dict[str, object], key: str, where: tuple[str | int, ...], *, required: bool
    ) -> Path | None:
        if key not in table:
            if required:
                self.error((*where, key), "required: the path of a file")
            return None
        text = self.string(table[key], (*where, key))
        if not text:
            if text == "":
                self.error((*where, key), "empty path")
            return None
        # No resolve(): a symlinked file (a Kubernetes ConfigMap) must be re-read through its link on reload.
        return Path(text) if Path(text).is_absolute() else self.base / text

    def address(
        self, table: dict[str, object], key: str, where: tuple[str | int, ...], default: str | None
    ) -> tuple[str, int] | None:
        value = table.get(key, default)
        if value is None:
            self.error((*where, key), "required: host:port")
            return None
        text = self.string(value, (*where, key))
        if text is None:
            return None
        try:
            return parse_hostport(text)
        except ValueError as exc:
            self.error((*where, key), str(exc))
            return None

    def boolean(self, value: object, path: tuple[str | int, ...]) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(path, expected(value, "true or false"))
        return None

    def number(self, value: object, path: tuple[str | int, ...], low: float, high: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.error(path, expected(value, f"a number in {low:g}..{high:g}"))
            return None
        return float(value)

    def tls(self, doc: dict[str, object], center: CenterSettings | None = None) -> TlsFiles | None:
        table = self.section(doc, "tls", ("cert", "key", "ca"))
        if "tls" not in doc:
            if center is not None:
                return center.tls  # the enrolled credentials
            self.error(("tls",), "required: a [tls] table with cert, key and ca (or a [center] with dir)")
            return None
        cert = self.path(table, "cert", ("tls",), required=True)
        key = self.path(table, "key", ("tls",), required=True)
        ca = self.path(table, "ca", ("tls",), required=True)
        if cert is None or key is None or ca is None:
            return None
        return TlsFiles(cert, key, ca)


# [gateway]: the pacing of what the gateway answers itself (gateway/pacing.py): (lowest, default).
_PACING_DEFAULTS: dict[str, tuple[float, float]] = {
    "client_local_answers_per_s": (1, 1000.0),
    "identity_local_answers_per_s": (1, 2000.0),
    "client_refusal_audit_interval_s": (0, 1.0),
}


def _rate_or_interval(
    check: ConfigChecker, low: float, value: object, path: tuple[str | int, ...]
) -> float | None:
    return check.number(value, path, low, 1e9)


# [overlay]: every field of HandshakeLimits, with its bounds. Integers are counts, floats seconds or rates.
_OVERLAY_BOUNDS: dict[str, tuple[float, float]] = {
    "max_pending_handshakes": (1, 1_000_000),
    "max_pending_per_source": (1, 1_000_000),
    "source_rate_per_s": (0.001, 1_000_000),
    "source_burst": (1, 1_000_000),
    "max_sources": (1, 10_000_000),
    "handshake_timeout_s": (0.01, 600),
    "handshake_timeout_min_s": (0.01, 600),
    "timeout_scale_from": (0, 0.99),
    "listen_backlog": (1, 1_000_000),
    "refusal_audit_interval_s": (0.01, 86_400),
}


def _overlay(check: ConfigChecker, doc: dict[str, object]) -> HandshakeLimits | None:
    table = check.section(doc, "overlay", tuple(_OVERLAY_BOUNDS))
    defaults = HandshakeLimits()
    values: dict[str, float] = {}
    for field in fields(HandshakeLimits):
        low, high = _OVERLAY_BOUNDS[field.name]
        default = getattr(defaults, field.name)
        if field.name not in table:
            values[field.name] = default
            continue
        where = ("overlay", field.name)
        value = table[field.name]
        checked = (
            check.integer(value, where, int(low), int(high))
            if isinstance(default, int)
            else check.number(value, where, low, high)
        )
        if checked is not None:
            values[field.name] = checked
    if len(values) < len(_OVERLAY_BOUNDS):
        return None
    if values["handshake_timeout_min_s"] > values["handshake_timeout_s"]:
        check.error(
            ("overlay", "handshake_timeout_min_s"),
            f"{values['handshake_timeout_min_s']:g} is above "
            f"handshake_timeout_s ({values['handshake_timeout_s']:g})",
        )
        return None
    return HandshakeLimits(**values)  # type: ignore[arg-type]


def _center(check: ConfigChecker, doc: dict[str, object], *, gateway: bool) -> CenterSettings | None:
    keys = ("dir", "max_staleness_s", "startup_timeout_s", "receive_timeout_s", "renew")
    table = check.section(doc, "center", keys if gateway else ("dir", "renew"))
    if "center" not in doc:
        return None
    where = ("center",)
    directory = check.path(table, "dir", where, required=True)
    staleness = check.optional(
        table, "max_staleness_s", where, lambda v, p: check.number(v, p, 0.1, 366 * 86400), 86400.0
    )
    startup = check.optional(
        table, "startup_timeout_s", where, lambda v, p: check.number(v, p, 0.1, 86400), 300.0
    )
    receive = check.optional(
        table, "receive_timeout_s", where, lambda v, p: check.number(v, p, 0.1, 3600), 30.0
    )
    renew = check.optional(table, "renew", where, check.boolean, True)
    if directory is None or staleness is None or startup is None or receive is None or renew is None:
        return None
    return CenterSettings(directory, staleness, startup, receive, renew)


def read_toml(path: Path) -> tuple[str, dict[str, object]]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [PolicyIssue(source, None, None, "", f"cannot read the file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([PolicyIssue(source, None, None, "", f"not UTF-8 text: {exc.reason}")]) from None
    try:
        return text, toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError([syntax_issue(source, text, exc)]) from None


def raise_problems(path: Path, text: str, checker: ConfigChecker) -> None:
    if not checker.problems:
        return
    locator = LineLocator(text)
    raise ConfigError(
        PolicyIssue(str(path), locator.line_of(field), None, format_path(field), message)
        for field, message in checker.problems
    )


def load_gateway_config(path: Path) -> GatewayConfig:
    text, doc = read_toml(path)
    check = ConfigChecker(path.absolute().parent)
    check.keys(doc, (), ("gateway", "tls", "admin", "audit", "overlay", "center"))
    center = _center(check, doc, gateway=True)
    gw = check.section(
        doc,
        "gateway",
        (
            "name",
            "listen",
            "policy",
            "policy_quiet_s",
            "loop",
            "max_sessions",
            "client_max_in_flight",
            "client_idle_timeout_s",
            *_PACING_DEFAULTS,
            "reassembly_budget_mib",
            "reassembly_timeout_s",
            "max_sessions_per_identity",
        ),
    )
    name = check.optional(gw, "name", ("gateway",), check.string, socket.gethostname())
    listen = check.address(gw, "listen", ("gateway",), "127.0.0.1:8443")
    if "center" in doc and "policy" in gw:
        check.error(("gateway", "policy"), "a gateway with a [center] takes its policy from the center")
    policy = check.path(gw, "policy", ("gateway",), required="center" not in doc)
    policy_quiet = check.optional(
        gw, "policy_quiet_s", ("gateway",), lambda v, p: check.number(v, p, 0, 3600), DEFAULT_QUIET_S
    )
    loop = check.optional(
        gw, "loop", ("gateway",), lambda v, p: check.choice(v, p, ("uvloop", "asyncio")), "uvloop"
    )
    max_sessions = check.optional(
        gw, "max_sessions", ("gateway",), lambda v, p: check.integer(v, p, 1, 1_000_000), 20_000
    )
    max_in_flight = check.optional(
        gw, "client_max_in_flight", ("gateway",), lambda v, p: check.integer(v, p, 1, 1024), 16
    )
    idle_timeout = check.optional(
        gw, "client_idle_timeout_s", ("gateway",), lambda v, p: check.number(v, p, 0, 86400), 0.0
    )
    pacing = {
        key: check.optional(gw, key, ("gateway",), partial(_rate_or_interval, check, low), default)
        for key, (low, default) in _PACING_DEFAULTS.items()
    }
    reassembly_budget = check.optional(
        gw,
        "reassembly_budget_mib",
        ("gateway",),
        lambda v, p: check.number(v, p, 0.0625, 1_000_000),
        DEFAULT_REASSEMBLY_BUDGET_MIB,
    )
    reassembly_timeout = check.optional(
        gw, "reassembly_timeout_s", ("gateway",), lambda v, p: check.number(v, p, 0.1, 3600), 30.0
    )
    per_identity = check.optional(
        gw,
        "max_sessions_per_identity",
        ("gateway",),
        lambda v, p: check.integer(v, p, 0, 1_000_000),
        DEFAULT_MAX_SESSIONS_PER_IDENTITY,
    )
    tls = check.tls(doc, center)

    admin = check.section(doc, "admin", ("listen",))
    admin_listen: tuple[str, int] | None = None
    if admin.get("listen", "127.0.0.1:9100") != "":
        admin_listen = check.address(admin, "listen", ("admin",), "127.0.0.1:9100")

    audit = check.section(
        doc, "audit", ("file", "stdout", "aggregate_reads_s", "queue_limit", "on_failure", "sinks")
    )
    sinks = audit_sinks(check, audit, name or "ztgate")
    on_failure = check.optional(
        audit, "on_failure", ("audit",), lambda v, p: check.choice(v, p, ("closed", "open")), "closed"
    )
    aggregate = check.optional(
        audit, "aggregate_reads_s", ("audit",), lambda v, p: check.number(v, p, 0, 3600), 1.0
    )
    queue_limit = check.optional(
        audit, "queue_limit", ("audit",), lambda v, p: check.integer(v, p, 1, 10_000_000), 100_000
    )
    overlay = _overlay(check, doc)
    raise_problems(path, text, check)
    assert name is not None and listen is not None and loop is not None and tls is not None
    assert max_sessions is not None and max_in_flight is not None and on_failure is not None
    assert idle_timeout is not None and policy_quiet is not None
    assert reassembly_budget is not None and reassembly_timeout is not None and per_identity is not None
    assert aggregate is not None and queue_limit is not None and overlay is not None
    return GatewayConfig(
        source=path,
        name=name,
        listen=listen,
        policy=policy,
        policy_quiet_s=policy_quiet,
        tls=tls,
        loop=loop,
        max_sessions=max_sessions,
        client_max_in_flight=max_in_flight,
        client_idle_timeout_s=idle_timeout,
        reassembly_budget_mib=reassembly_budget,
        reassembly_timeout_s=reassembly_timeout,
        max_sessions_per_identity=per_identity,
        **{key: value for key, value in pacing.items() if value is not None},
        admin_listen=admin_listen,
        audit_sinks=sinks,
        audit_aggregate_reads_s=aggregate,
        audit_queue_limit=queue_limit,
        audit_on_failure=on_failure,
        overlay=overlay,
        center=center,
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _gateway_id(check: ConfigChecker) -> Callable[[object, tuple[str | int, ...]], str | None]:
    def parse(value: object, where: tuple[str | int, ...]) -> str | None:
        text = check.string(value, where)
        if text is None:
            return None
        try:
            found = parse_spiffe_id(text)
        except IdentityError as exc:
            check.error(where, str(exc))
            return None
        if found.kind != "gateway":
            check.error(where, f"{text} is a {found.kind} id, not a gateway's (spiffe://<td>/gateway/...)")
            return None
        return text

    return parse


_SINK_KEYS: dict[str, tuple[str, ...]] = {
    "file": ("path", "rotate_mib", "keep"),
    "stdout": (),
    "syslog": (
        "transport", "address", "hostname", "app_name", "facility", "ca", "cert", "key", "server_name",
        "spool_dir", "spool_mib", "on_spool_full", "hold_mib", "connect_timeout_s", "max_datagram_bytes",
    ),
}  # fmt: skip


def audit_sinks(check: ConfigChecker, audit: dict[str, object], gateway: str) -> tuple[SinkSettings, ...]:
    """``[[audit.sinks]]``, or the older ``file``/``stdout`` keys (not both): where the records go (the
    gateway's and the center's ``[audit]``; ``gateway`` names the process, the syslog HOSTNAME)."""
    if "sinks" not in audit:
        path = check.path(audit, "file", ("audit",), required=False)
        # Without a file the audit trail goes to stdout: denies are always recorded somewhere.
        stdout = check.optional(audit, "stdout", ("audit",), check.boolean, path is None)
        found = [SinkSettings("file", "file", path=path)] if path is not None else []
        return tuple(found + ([SinkSettings("stdout", "stdout")] if stdout else []))
    for old in ("file", "stdout"):
        if old in audit:
            check.error(
                ("audit", old), "use a [[audit.sinks]] entry: file and stdout cannot be mixed with sinks"
            )
    raw = audit["sinks"]
    if not isinstance(raw, list) or not raw:
        check.error(("audit", "sinks"), "expected one or more [[audit.sinks]] tables")
        return ()
    found, names = [], set()
    for index, item in enumerate(raw):
        where: tuple[str | int, ...] = ("audit", "sinks", index)
        table = check.table(item, where)
        if table is None:
            continue
        kind = check.optional(table, "type", where, lambda v, p: check.choice(v, p, SINK_TYPES), None)
        if kind is None:
            if "type" not in table:
                check.error((*where, "type"), f"required: one of {', '.join(SINK_TYPES)}")
            continue
        check.keys(table, where, ("type", "name", "queue_limit", "format", *_SINK_KEYS[kind]))
        name = check.optional(table, "name", where, check.string, f"{kind}-{index}")
        if name in names:
            check.error((*where, "name"), f"another sink is already named {name!r}")
        names.add(name)
        queue_limit = check.optional(
            table, "queue_limit", where, lambda v, p: check.integer(v, p, 1, 10_000_000), 100_000
        )
        fmt = check.optional(table, "format", where, lambda v, p: check.choice(v, p, FORMATS), None)
        assert name is not None and queue_limit is not None
        if kind == "file":
            path = check.path(table, "path", where, required=True)
            rotate = check.optional(
                table, "rotate_mib", where, lambda v, p: check.number(v, p, 0, 1_000_000), 0.0
            )
            keep = check.optional(table, "keep", where, lambda v, p: check.integer(v, p, 1, 1000), 5)
            if path is not None and rotate is not None and keep is not None:
                found.append(
                    SinkSettings(
                        "file",
                        name,
                        path=path,
                        rotate_mib=rotate,
                        keep=keep,
                        queue_limit=queue_limit,
                        format=fmt,
                    )
                )
        elif kind == "stdout":
            found.append(SinkSettings("stdout", name, queue_limit=queue_limit, format=fmt))
        else:
            syslog = _syslog(check, table, where, gateway)
            if syslog is not None:
                found.append(SinkSettings("syslog", name, syslog=syslog, queue_limit=queue_limit, format=fmt))
    return tuple(found)


def _syslog(
    check: ConfigChecker, table: dict[str, object], where: tuple[str | int, ...], gateway: str
) -> SyslogSettings | None:
    transport = check.optional(table, "transport", where, lambda v, p: check.choice(v, p, TRANSPORTS), "tls")
    address = check.address(table, "address", where, None)
    spooled = transport != "udp"
    spool_dir = check.path(table, "spool_dir", where, required=spooled)
    if not spooled and spool_dir is not None:
        check.error((*where, "spool_dir"), "a UDP sink has no spool: UDP is lossy by design (RFC 5426)")
    if not spooled and "hold_mib" in table:
        check.error((*where, "hold_mib"), "a UDP sink holds nothing: past its queue_limit it drops records")
    ca = check.path(table, "ca", where, required=transport == "tls")
    cert = check.path(table, "cert", where, required=False)
    key = check.path(table, "key", where, required=cert is not None)
    if transport != "tls":
        for field in ("ca", "cert", "key", "server_name"):
            if field in table:
                check.error((*where, field), 'only a sink with transport = "tls" takes TLS settings')
    if key is not None and cert is None:
        check.error((*where, "cert"), "required with key: the client certificate")
    values = {
        "hostname": check.optional(table, "hostname", where, check.string, gateway),
        "app_name": check.optional(table, "app_name", where, check.string, "ztgate"),
        "facility": check.optional(
            table, "facility", where, lambda v, p: check.choice(v, p, FACILITIES), "local0"
        ),
        "server_name": check.optional(table, "server_name", where, check.string, None),
        "spool_mib": check.optional(
            table, "spool_mib", where, lambda v, p: check.number(v, p, 0.01, 1_000_000), 256.0
        ),
        "on_spool_full": check.optional(
            table,
            "on_spool_full",
            where,
            lambda v, p: check.choice(v, p, ON_FULL_POLICIES),
            "drop_oldest_reads",
        ),
        "hold_mib": check.optional(
            table, "hold_mib", where, lambda v, p: check.number(v, p, 0.001, 100_000), 64.0
        ),
        "connect_timeout_s": check.optional(
            table, "connect_timeout_s", where, lambda v, p: check.number(v, p, 0.1, 600), 5.0
        ),
        "max_datagram_bytes": check.optional(
            table, "max_datagram_bytes", where, lambda v, p: check.integer(v, p, 480, 65_507), 8192
        ),
    }
    if (
        transport is None
        or address is None
        or any(v is None for k, v in values.items() if k != "server_name")
    ):
        return None
    return SyslogSettings(
        transport=transport,
        address=address,
        ca=ca,
        cert=cert,
        key=key,
        spool_dir=spool_dir,
        **values,  # type: ignore[arg-type]
    )


def load_agent_config(path: Path) -> AgentConfig:
    text, doc = read_toml(path)
    check = ConfigChecker(path.absolute().parent)
    check.keys(doc, (), ("agent", "tls", "listeners", "center"))
    center = _center(check, doc, gateway=False)
    agent = check.section(
        doc, "agent", ("gateway", "gateway_id", "connect_timeout_s", "allow_remote", "admin")
    )
    default_gateway = agent.get("gateway")
    default_gateway_id = check.optional(agent, "gateway_id", ("agent",), _gateway_id(check), None)
    connect_timeout = check.optional(
        agent, "connect_timeout_s", ("agent",), lambda v, p: check.number(v, p, 0.1, 120), 5.0
    )
    allow_remote = check.optional(agent, "allow_remote", ("agent",), check.boolean, False)
    admin_listen = check.address(agent, "admin", ("agent",), None) if "admin" in agent else None
    if admin_listen is not None and not is_loopback(admin_listen[0]) and allow_remote is False:
        # Readiness and metrics name the agent's identity, certificate files and assets.
        check.error(
            ("agent", "admin"),
            f"{admin_listen[0]} is not a loopback address: the admin endpoints tell this agent's "
            "identity and certificate files to whoever reaches them; listen on 127.0.0.1, or set "
            "[agent] allow_remote = true",
        )
    tls = check.tls(doc, center)
    listeners: list[AgentListener] = []
    raw = doc.get("listeners")
    if not isinstance(raw, list) or not raw:
        check.error(("listeners",), "required: at least one [[listeners]] table with listen and asset")
        raw = []
    for index, item in enumerate(raw):
        where: tuple[str | int, ...] = ("listeners", index)
        table = check.table(item, where)
        if table is None:
            continue
        check.keys(table, where, ("listen", "asset", "gateway", "gateway_id", "protocol"))
        listen = check.address(table, "listen", where, None)
        if listen is not None and not is_loopback(listen[0]) and allow_remote is False:
            # Whoever reaches a listener speaks with the agent's identity, and the port is plaintext.
            check.error(
                (*where, "listen"),
                f"{listen[0]} is not a loopback address: anyone who reaches this plaintext port acts "
                "with this agent's identity; listen on 127.0.0.1, or set [agent] allow_remote = true",
            )
        asset = check.string(table.get("asset"), (*where, "asset")) if "asset" in table else None
        if "asset" not in table:
            check.error((*where, "asset"), "required: the asset this port reaches")
        gateway = check.address(
            table, "gateway", where, default_gateway if isinstance(default_gateway, str) else None
        )
        protocol = check.optional(
            table, "protocol", where, lambda v, p: check.choice(v, p, ("modbus", "enip", "opcua")), None
        )
        gateway_id = check.optional(table, "gateway_id", where, _gateway_id(check), default_gateway_id)
        if gateway is not None and gateway_id is None and _is_address(gateway[0]):
            check.error(
                (*where, "gateway_id"),
                f"required: the gateway {gateway[0]} is an address, so its SPIFFE id cannot be derived "
                "from its name (the agent pins the gateway's id)",
            )
        if listen is not None and asset is not None and gateway is not None:
            listeners.append(AgentListener(listen, asset, gateway, protocol, gateway_id))
    raise_problems(path, text, check)
    assert tls is not None and connect_timeout is not None and allow_remote is not None
    return AgentConfig(
        source=path,
        tls=tls,
        listeners=tuple(listeners),
        connect_timeout_s=connect_timeout,
        center=center,
        allow_remote=allow_remote,
        admin_listen=admin_listen,
    )
