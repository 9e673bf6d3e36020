"""Checking ``[assets.<name>]`` tables: the settings every asset has, and those of its protocol.

Keys of another protocol are reported as such ("applies to enip assets only") rather than as unknown,
so that a Modbus habit on an EtherNet/IP asset gets a message that says what is wrong. OPC UA's own
settings are checked in :mod:`policies.opcua.assets`.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType

from policies.errors import FieldPath, quote
from policies.model import (
    DENY_ACTIONS,
    ENIP_DENY,
    MODBUS_DENY,
    MODES,
    ON_DESYNC,
    ON_STALE,
    OPCUA_DENY,
    PROTOCOLS,
    Asset,
    DenyAction,
    EnipIdentity,
)
from policies.opcua.assets import OPCUA_KEYS, OpcuaAssetChecks
from policies.ranges import IntervalSet
from protocols.enip.epath import PortSegment

__all__ = ["UNIT_BOUNDS", "AssetChecks"]

UNIT_BOUNDS = (0, 255)
ENIP_PORT = 44818
_COMMON_KEYS = (
    "protocol",
    "upstream",
    "mode",
    "on_stale",
    "deny",
    "queue_limit",
    "connect_timeout_s",
    "response_timeout_s",
)
# What the shared upstream pool (gateway/upstream.py) takes from an asset of a protocol that uses it.
_POOL_KEYS = ("max_connections", "queue_timeout_s", "on_desync")
_PROTOCOL_KEYS = {
    "modbus": (*_POOL_KEYS, "unit_ids", "unit_map", "max_in_flight", "preserve_order"),
    "enip": (*_POOL_KEYS, "max_sessions", "connection_size", "large_forward_open", "route", "identity"),
    "opcua": OPCUA_KEYS,
}
_ALL_KEYS = tuple(dict.fromkeys(_COMMON_KEYS + tuple(k for keys in _PROTOCOL_KEYS.values() for k in keys)))
_DEFAULT_DENY = {"modbus": MODBUS_DENY, "enip": ENIP_DENY, "opcua": OPCUA_DENY}
_DENY_KEYS = ("action", "function", "address", "value", "unsupported", "unit")
_IDENTITY_KEYS = ("vendor_id", "device_type", "product_code", "revision", "serial", "product_name")

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ASSET_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HOST_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_REVISION = re.compile(r"(\d{1,3})\.(\d{1,3})", re.ASCII)
_ROUTE_HELP = 'expected "port/link" pairs such as "1/0" (backplane, slot 0) or "1/0/2/10.0.0.9"'
# Connection sizes: 9 bits in a Forward Open, 16 in a Large Forward Open, of which Logix takes 4002.
_SMALL_CONNECTION = (64, 511)
_LARGE_CONNECTION = (64, 4002)


class AssetChecks(OpcuaAssetChecks):
    def assets(self, value: object) -> tuple[set[str], dict[str, Asset]]:
        table = self.table(value, ("assets",))
        assets: dict[str, Asset] = {}
        if table is None:
            return set(), assets
        for name, body in table.items():
            asset = self.asset(name, body)
            if asset is not None:
                assets[name] = asset
        return set(table), assets

    def asset(self, name: str, value: object) -> Asset | None:
        path: FieldPath = ("assets", name)
        before = len(self.problems)
        if _ASSET_NAME.fullmatch(name) is None or len(name) > 253:
            self.error(
                path,
                f"asset name {quote(name)}: expected DNS labels of lower-case letters, digits and"
                f' "-" joined by "." (e.g. "plc-1", "line1.press-3")',
            )
        table = self.table(value, path)
        if table is None:
            return None
        self.keys(table, path, _ALL_KEYS)
        for required in ("protocol", "upstream"):
            if required not in table:
                self.error(path, f'missing required key "{required}"')
        protocol = (
            self.choice(table["protocol"], (*path, "protocol"), PROTOCOLS) if "protocol" in table else None
        )
        if protocol is not None:
            for key in table:
                speakers = [name for name, keys in _PROTOCOL_KEYS.items() if key in keys]
                if speakers and protocol not in speakers:
                    self.error((*path, key), f"applies to {' and '.join(speakers)} assets only")
        enip = protocol == "enip"
        endpoint_path = ""
        upstream: tuple[str, int] | None = None
        if "upstream" in table and protocol == "opcua":
            found = self.opcua_upstream(table["upstream"], (*path, "upstream"))
            if found is not None:
                upstream, endpoint_path = (found[0], found[1]), found[2]
        elif "upstream" in table:
            upstream = self.upstream(table["upstream"], (*path, "upstream"), ENIP_PORT if enip else None)
        mode = self.optional(table, "mode", path, lambda v, p: self.choice(v, p, MODES), "enforce")
        on_stale = self.optional(table, "on_stale", path, lambda v, p: self.choice(v, p, ON_STALE), "closed")
        kind = protocol or "modbus"
        deny = self.optional(
            table, "deny", path, lambda v, p: self.deny_action(v, p, kind), _DEFAULT_DENY[kind]
        )

        def count(key: str, low: int, high: int, default: int) -> int | None:
            return self.optional(table, key, path, lambda v, p: self.integer(v, p, low, high), default)

        def seconds(key: str, default: float) -> float | None:
            return self.optional(table, key, path, lambda v, p: self.seconds(v, p, 3600.0), default)

        settings: dict[str, object] = {
            "queue_limit": count("queue_limit", 0, 100_000, 64),
            "connect_timeout_s": seconds("connect_timeout_s", 3.0),
            "response_timeout_s": seconds("response_timeout_s", 2.0),
        }
        if protocol == "opcua":
            settings.update(self.opcua_settings(table, path))
            settings["endpoint_path"] = endpoint_path
        else:
            settings["max_connections"] = count("max_connections", 1, 1000, 1)
            settings["queue_timeout_s"] = seconds("queue_timeout_s", 0.4)
            settings["on_desync"] = self.optional(
                table, "on_desync", path, lambda v, p: self.choice(v, p, ON_DESYNC), "reconnect"
            )
            if enip:
                settings.update(self.enip_settings(table, path))
            else:
                settings.update(self.modbus_settings(table, path))
        if len(self.problems) > before:
            return None
        assert protocol is not None and upstream is not None and mode is not None and deny is not None
        assert on_stale is not None
        optional = ("application_cert", "application_key", "device_cert")  # files that may be left out
        assert all(settings[key] is not None for key in settings if key not in optional)
        return Asset(
            name=name,
            protocol=protocol,
            upstream_host=upstream[0],
            upstream_port=upstream[1],
            mode=mode,
            on_stale=on_stale,
            deny=deny,
            **settings,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------------------------ modbus

    def modbus_settings(self, table: dict[str, object], path: FieldPath) -> dict[str, object]:
        unit_set = (
            self.ranges(table["unit_ids"], path, "unit_ids", UNIT_BOUNDS)
            if "unit_ids" in table
            else IntervalSet([(1, 1)])
        )
        unit_ids = (
            frozenset(u for low, high in unit_set.ranges for u in range(low, high + 1))
            if unit_set
            else frozenset()
        )
        unit_map = (
            self.unit_map(table["unit_map"], (*path, "unit_map"), unit_ids) if "unit_map" in table else {}
        )
        max_in_flight = self.optional(
            table, "max_in_flight", path, lambda v, p: self.integer(v, p, 1, 1000), 1
        )
        return {
            "unit_ids": unit_ids,
            "unit_map": None if unit_map is None else MappingProxyType(unit_map),
            "max_in_flight": max_in_flight,
            "preserve_order": self.optional(table, "preserve_order", path, self.boolean, False),
        }

    def unit_map(self, value: object, path: FieldPath, unit_ids: frozenset[int]) -> dict[int, int] | None:
        table = self.table(value, path)
        if table is None:
            return None
        out: dict[int, int] = {}
        for key, device in table.items():
            key_path = (*path, key)
            if not (key.isascii() and key.isdigit() and len(key) <= 3) or not 0 <= int(key) <= 255:
                self.error(
                    key_path, f'{quote(key)}: expected a client unit id in 0..255, as in {{ "1" = 17 }}'
                )
                continue
            if unit_ids and int(key) not in unit_ids:
                self.error(
                    key_path,
                    f"client unit {int(key)} is not in unit_ids ({', '.join(map(str, sorted(unit_ids)))})",
                )
                continue
            mapped = self.integer(device, key_path, *UNIT_BOUNDS)
            if mapped is not None:
                out[int(key)] = mapped
        return out

    # -------------------------------------------------------------------------------------- enip

    def enip_settings(self, table: dict[str, object], path: FieldPath) -> dict[str, object]:
        large = self.optional(table, "large_forward_open", path, self.boolean, False)
        low, high = _LARGE_CONNECTION if large else _SMALL_CONNECTION

        def connection_size(value: object, field: FieldPath) -> int | None:
            size = self.integer(value, field, 1, 0xFFFF)
            if size is not None and not low <= size <= high:
                forward_open = (
                    "a Large Forward Open" if large else "a Forward Open (large_forward_open = false)"
                )
                self.error(field, f"{size} is outside {low}..{high} bytes, what {forward_open} can ask for")
                return None
            return size

        return {
            "max_sessions": self.optional(
                table, "max_sessions", path, lambda v, p: self.integer(v, p, 1, 64), 1
            ),
            "connection_size": self.optional(table, "connection_size", path, connection_size, 511),
            "large_forward_open": large,
            "route": self.optional(table, "route", path, self.route, ()),
            "identity": self.optional(table, "identity", path, self.identity, EnipIdentity()),
        }

    def boolean(self, value: object, path: FieldPath) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(path, f"{value!r}: expected true or false")
        return None

    def route(self, value: object, path: FieldPath) -> tuple[PortSegment, ...] | None:
        text = self.string(value, path)
        if text is None:
            return None
        items = [item.strip() for item in text.split("/")] if text.strip() else []
        if not items or len(items) % 2:
            self.error(path, f"{quote(text)}: {_ROUTE_HELP}")
            return None
        hops: list[PortSegment] = []
        for port_text, link_text in zip(items[::2], items[1::2], strict=True):
            if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 0xFFFF:
                self.error(path, f"{quote(text)}: port {quote(port_text)} is not a number in 1..65535")
                return None
            if link_text.isascii() and link_text.isdigit() and int(link_text) <= 255:
                link = bytes((int(link_text),))
            else:
                try:
                    ipaddress.IPv4Address(link_text)
                except ValueError:
                    self.error(
                        path,
                        f"{quote(text)}: link {quote(link_text)} is neither a node number (0..255)"
                        " nor an IPv4 address",
                    )
                    return None
                link = link_text.encode("ascii")
            hops.append(PortSegment(int(port_text), link))
        return tuple(hops)

    def identity(self, value: object, path: FieldPath) -> EnipIdentity | None:
        table = self.table(value, path)
        if table is None:
            return None
        before = len(self.problems)
        self.keys(table, path, _IDENTITY_KEYS)
        default = EnipIdentity()

        def number(key: str, high: int, fallback: int) -> int | None:
            return self.optional(table, key, path, lambda v, p: self.integer(v, p, 0, high), fallback)

        vendor = number("vendor_id", 0xFFFF, default.vendor_id)
        device_type = number("device_type", 0xFFFF, default.device_type)
        product_code = number("product_code", 0xFFFF, default.product_code)
        serial = number("serial", 0xFFFF_FFFF, default.serial)
        revision = self.optional(
            table, "revision", path, self.revision, (default.revision_major, default.revision_minor)
        )
        name = self.optional(table, "product_name", path, self.product_name, default.product_name)
        if len(self.problems) > before:
            return None
        assert vendor is not None and device_type is not None and product_code is not None
        assert serial is not None and revision is not None and name is not None
        return EnipIdentity(vendor, device_type, product_code, revision[0], revision[1], serial, name)

    def revision(self, value: object, path: FieldPath) -> tuple[int, int] | None:
        text = self.string(value, path)
        if text is None:
            return None
        match = _REVISION.fullmatch(text)
        if match is None or not (1 <= int(match[1]) <= 255 and int(match[2]) <= 255):
            self.error(
                path, f'{quote(text)}: expected "major.minor", each 0..255 (major from 1), e.g. "20.11"'
            )
            return None
        return int(match[1]), int(match[2])

    def product_name(self, value: object, path: FieldPath) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if not (1 <= len(text) <= 32 and text.isascii() and text.isprintable()):
            self.error(path, f"{quote(text)}: expected 1 to 32 printable ASCII characters")
            return None
        return text

    # ------------------------------------------------------------------------------------ common

    def upstream(self, value: object, path: FieldPath, default_port: int | None) -> tuple[str, int] | None:
        text = self.string(value, path)
        if text is None:
            return None
        expected = 'expected "host:port" (or "[v6addr]:port" for IPv6)'
        if default_port is not None:
            expected = (
                'expected "host" or "host:port" (or "[v6addr]:port" for IPv6;'
                f" port {default_port} if not given)"
            )
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep and default_port is not None and text.endswith("]"):
                host, sep, port = text[1:-1], ":", str(default_port)
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.error(path, f"{quote(text)}: {quote(host)} is not an IPv6 address; {expected}")
                return None
        else:
            host, sep, port = text.rpartition(":")
            if not sep and default_port is not None:
                host, sep, port = text, ":", str(default_port)
            if ":" in host:
                self.error(path, f'{quote(text)}: write an IPv6 address in brackets, as "[{host}]:{port}"')
                return None
            if not sep or _HOST_NAME.fullmatch(host) is None:
                self.error(path, f"{quote(text)}: {expected}")
                return None
            if host.replace(".", "").isdigit():
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    self.error(path, f"{quote(text)}: {quote(host)} is not an IPv4 address")
                    return None
        # isascii: str.isdigit (and int) also accept other scripts' digits, which no one means here.
        if (
            not sep
            or not (port.isascii() and port.isdigit() and len(port) <= 5)
            or not 1 <= int(port) <= 65535
        ):
            self.error(path, f"{quote(text)}: the port must be a number in 1..65535; {expected}")
            return None
        return host, int(port)

    def deny_action(self, value: object, path: FieldPath, protocol: str) -> DenyAction | None:
        table = self.table(value, path)
        if table is None:
            return None
        before = len(self.problems)
        self.keys(table, path, _DENY_KEYS)
        if protocol == "modbus" and "unsupported" in table:
            self.error(
                (*path, "unsupported"),
                "applies to enip and opcua assets only (Modbus refuses unknown function codes with the"
                " function code)",
            )
        if protocol != "modbus" and "unit" in table:
            self.error((*path, "unit"), "applies to modbus assets only (the code for an unknown unit id)")
        default = _DEFAULT_DENY[protocol]
        action = self.optional(
            table, "action", path, lambda v, p: self.choice(v, p, DENY_ACTIONS), default.action
        )

        def code(key: str, fallback: int) -> int | None:
            if protocol == "opcua":
                return self.optional(table, key, path, self.opcua_code, fallback)
            return self.optional(table, key, path, lambda v, p: self.integer(v, p, 1, 255), fallback)

        function, address = code("function", default.function), code("address", default.address)
        value_code, unsupported = code("value", default.value), code("unsupported", default.unsupported)
        unit = code("unit", default.unit)
        if len(self.problems) > before:
            return None
        assert action is not None and function is not None and address is not None
        assert value_code is not None and unsupported is not None and unit is not None
        return DenyAction(action, function, address, value_code, unsupported, unit)
