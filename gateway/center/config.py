"""``center.toml``: where a center listens, keeps its store and keys, and the lifetimes it grants.
Checked like the gateway's configuration: every problem at once, with file, line and field.

```toml
[center]
name = "center-1"                 # its own id: spiffe://<trust domain>/center/center-1
listen = "127.0.0.1:8600"
url = "https://127.0.0.1:8600"    # how gateways, agents and people reach it (printed with tokens)
store = "sqlite:center.db"        # or "postgresql://user@host/db" for several replicas
keys = "keys"                     # CA, signing key, TLS key (docs/center.md)

[certificates]                    # lifetimes in seconds (docs/architecture.md, "Identity and certificates")
gateway_s = 604800

[[audit.sinks]]                   # optional: the center's audit to the SIEM too, as a gateway's [audit]
type = "syslog"                   # (docs/operations.md); the store keeps every record either way
address = "siem.plant1.example:6514"
ca = "siem-ca.pem"
spool_dir = "spool"
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from gateway.config import ConfigChecker, audit_sinks, raise_problems, read_toml
from gateway.pki import PROFILES
from gateway.sinks import SinkSettings
from policies.errors import FieldPath

__all__ = ["LIFETIME_KINDS", "CenterConfig", "load_center_config"]

# The kinds of certificates the center issues, and their default lifetimes (docs/architecture.md,
# "Identity and certificates"): users and vendors at most 12 h, agents 24 h (up to 72 h), gateways
# 7 days, the center's own 30 days.
LIFETIME_KINDS = ("gateway", "agent", "user", "vendor", "center")
_DEFAULT_LIFETIME_S = {kind: PROFILES[kind].default_lifetime.total_seconds() for kind in LIFETIME_KINDS}


@dataclass(frozen=True)
class CenterConfig:
    source: Path
    name: str
    listen: tuple[str, int]
    url: str
    store: str
    keys: Path
    lifetimes_s: dict[str, float]
    max_body_bytes: int = 8 * 1024 * 1024
    heartbeat_s: float = 5.0
    bundle_validity_s: float = 7 * 86400.0
    token_max_ttl_s: float = 7 * 86400.0
    audit_sinks: tuple[SinkSettings, ...] = ()  # none: the audit stays in the store only
    audit_queue_limit: int = 100_000

    @property
    def base(self) -> Path:
        return self.source.absolute().parent

    def lifetime(self, kind: str) -> timedelta:
        return timedelta(seconds=self.lifetimes_s[kind])


def load_center_config(path: Path) -> CenterConfig:
    text, doc = read_toml(path)
    check = ConfigChecker(path.absolute().parent)
    check.keys(doc, (), ("center", "certificates", "audit"))
    center = check.section(
        doc,
        "center",
        (
            "name",
            "listen",
            "url",
            "store",
            "keys",
            "max_body_bytes",
            "heartbeat_s",
            "bundle_validity_s",
            "token_max_ttl_s",
        ),
    )
    where = ("center",)
    name = check.optional(center, "name", where, check.string, "center")
    listen = check.address(center, "listen", where, "127.0.0.1:8600")
    default_url = f"https://{listen[0]}:{listen[1]}" if listen is not None else ""
    url = check.optional(center, "url", where, check.string, default_url)
    if url is not None and not url.startswith("https://"):
        check.error((*where, "url"), f"{url!r}: expected an https:// URL")
    store = check.optional(center, "store", where, check.string, "sqlite:center.db")
    if store is not None and not store.startswith(("sqlite:", "postgresql://", "postgres://")):
        check.error((*where, "store"), f"{store!r}: expected sqlite:FILE or postgresql://...")
    keys = check.path(center, "keys", where, required=False) or check.base / "keys"
    body = check.optional(
        center, "max_body_bytes", where, lambda v, p: check.integer(v, p, 1024, 1 << 30), 8 * 1024 * 1024
    )
    heartbeat = check.optional(center, "heartbeat_s", where, lambda v, p: check.number(v, p, 0.05, 300), 5.0)
    validity = check.optional(
        center, "bundle_validity_s", where, lambda v, p: check.number(v, p, 1, 366 * 86400), 7 * 86400.0
    )
    token_ttl = check.optional(
        center, "token_max_ttl_s", where, lambda v, p: check.number(v, p, 1, 366 * 86400), 7 * 86400.0
    )

    certificates = check.section(doc, "certificates", tuple(f"{kind}_s" for kind in LIFETIME_KINDS))
    lifetimes: dict[str, float] = {}

    def lifetime(kind: str) -> Callable[[object, FieldPath], float | None]:
        most = PROFILES[kind].max_lifetime.total_seconds()
        return lambda v, p: check.number(v, p, 1, most)

    for kind in LIFETIME_KINDS:
        value = check.optional(
            certificates, f"{kind}_s", ("certificates",), lifetime(kind), _DEFAULT_LIFETIME_S[kind]
        )
        if value is not None:
            lifetimes[kind] = value
    audit = check.section(doc, "audit", ("file", "stdout", "sinks", "queue_limit"))
    sinks = audit_sinks(check, audit, name or "center") if audit else ()
    queue_limit = check.optional(
        audit, "queue_limit", ("audit",), lambda v, p: check.integer(v, p, 1, 10_000_000), 100_000
    )
    raise_problems(path, text, check)
    assert queue_limit is not None
    assert name is not None and listen is not None and url is not None and store is not None
    assert body is not None and heartbeat is not None and validity is not None and token_ttl is not None
    assert all(math.isfinite(v) for v in lifetimes.values())
    return CenterConfig(
        source=path,
        name=name,
        listen=listen,
        url=url.rstrip("/"),
        store=store,
        keys=keys,
        lifetimes_s=lifetimes,
        max_body_bytes=body,
        heartbeat_s=heartbeat,
        bundle_validity_s=validity,
        token_max_ttl_s=token_ttl,
        audit_sinks=sinks,
        audit_queue_limit=queue_limit,
    )
