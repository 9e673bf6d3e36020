"""``ztgate center init``: a new site's center in one folder, and the first admin's credentials, so a
fresh site needs nothing else. ``ztgate center credentials`` issues credentials on the center's own
host (it reads the CA key): the way back in when every admin certificate has run out.

```
DIR/center.toml     the configuration (gateway/center/config.py)
DIR/center.db       the SQLite store (unless --store names a PostgreSQL database)
DIR/keys/           CA, signing key, TLS key and certificate (gateway/center/authority.py)
DIR/admin/          the first admin's credentials folder (gateway/credentials.py)
```
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway.center.authority import create_keys, load_authority
from gateway.center.config import CenterConfig, load_center_config
from gateway.center.db import open_database
from gateway.center.store import ROLES, Store
from gateway.credentials import CenterInfo, Credentials, make_csr
from gateway.pki import PkiError
from policies.spiffe import IdentityError, parse_spiffe_id, parse_trust_domain

__all__ = ["SetupError", "init_center", "issue_credentials"]


class SetupError(ValueError):
    """Why a center cannot be set up as asked."""


def _config_text(name: str, listen: str, url: str, store: str) -> str:
    return f"""# ztgate center (docs/center.md). Relative paths are relative to this file.
[center]
name = "{name}"
listen = "{listen}"
url = "{url}"
store = "{store}"
keys = "keys"

# Certificate lifetimes in seconds: the defaults, which are also the maximums
# (ztgate's docs/architecture.md, "Identity and certificates").
[certificates]
gateway_s = 604800
agent_s = 86400
user_s = 43200
vendor_s = 43200
"""


async def init_center(
    directory: Path,
    trust_domain: str,
    *,
    name: str = "center",
    listen: str = "127.0.0.1:8600",
    url: str | None = None,
    store: str = "sqlite:center.db",
    admin: str | None = None,
) -> tuple[CenterConfig, Credentials]:
    """Create the folder's configuration, keys, store and the first admin (default
    ``spiffe://<td>/user/admin``); returns the configuration and the admin's credentials."""
    try:
        parse_trust_domain(trust_domain)
    except IdentityError as exc:
        raise SetupError(str(exc)) from None
    config_path = directory / "center.toml"
    if config_path.exists():
        raise SetupError(f"{config_path} exists: this folder has a center already")
    admin = admin or f"spiffe://{trust_domain}/user/admin"
    try:
        sid = parse_spiffe_id(admin)
    except IdentityError as exc:
        raise SetupError(str(exc)) from None
    if sid.trust_domain != trust_domain or sid.kind != "user":
        raise SetupError(f"the admin must be a user id of {trust_domain} (spiffe://{trust_domain}/user/...)")
    config = _create_files(
        directory, trust_domain, _config_text(name, listen, url or f"https://{listen}", store)
    )
    store_ = Store(open_database(config.store, config.base))
    await store_.open()
    try:
        await store_.put_identity(admin, "admin", "center init")
        await store_.audit("center_init", None, {"admin": admin, "trust_domain": trust_domain})
        credentials = await issue_credentials(config, store_, admin, directory / "admin")
    finally:
        await store_.close()
    return config, credentials


def _create_files(directory: Path, trust_domain: str, config_text: str) -> CenterConfig:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        create_keys(directory / "keys", trust_domain)
    except PkiError as exc:
        raise SetupError(str(exc)) from None
    config_path = directory / "center.toml"
    config_path.write_text(config_text)
    config = load_center_config(config_path)
    authority = load_authority(config.keys, config.name)
    authority.ensure_tls_certificate(config.lifetime("center"), now=time.time())
    return config


async def issue_credentials(config: CenterConfig, store: Store, identity: str, out: Path) -> Credentials:
    """Credentials for an identity the store knows, made with the CA key on this host."""
    role = await store.role_of(identity)
    if role is None:
        raise SetupError(f"{identity} is not an identity of this center (give it a role first)")
    authority = load_authority(config.keys, config.name)
    sid = parse_spiffe_id(identity)
    key, csr = make_csr(identity)
    _, public_key = authority.check_csr(csr, identity)
    certificate = authority.issue(sid, public_key, config.lifetime(ROLES[role]))
    credentials = Credentials(out)
    credentials.save(
        key,
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        authority.trust_bundle(),
        CenterInfo(
            url=config.url,
            trust_domain=authority.trust_domain,
            center_id=str(authority.center_id),
            fingerprint=authority.fingerprint(),
            signing_keys=tuple(authority.signing_keys()),
            id=identity,
            role=role,
        ),
    )
    await store.record_certificate(
        certificate.serial_number,
        identity,
        certificate.not_valid_before_utc.timestamp(),
        certificate.not_valid_after_utc.timestamp(),
        "local",
    )
    await store.audit("credentials_issued", None, {"id": identity, "role": role, "out": str(out)})
    return credentials
