"""A gateway's link to its center: signed bundles in, verified, applied through the hot-reload path,
kept on disk; staleness tracked, and assets closed when it passes the limit.

- **Verify.** Every document on the stream (and the one on disk) is checked against the signing keys
  pinned at enrollment (``center.json``), plus those a verified document announced (``next_keys``).
  A bad signature, a malformed document, another trust domain, an expired bundle, or a revision
  older than the one in force is refused and audited (``bundle_refused``); the policy in force stays.
- **Apply.** A newer policy revision is compiled in a worker thread and installed in the
  :class:`~gateway.policy_store.PolicyStore`; its envelope is written to ``bundle.json`` next to the
  credentials, so the gateway restarts without the center. Only the newest pending revision is
  compiled, and other kinds of documents need not wait for it.
- **Locks.** A ``locks`` document is installed as it arrives (:class:`gateway.locks.LockSet`): the
  gateway cuts the live sessions a new lock matches and refuses matching handshakes; it is kept in
  ``locks.json`` and loaded at start, and a lock whose TTL runs out lifts itself (``lock_expired``).
- **Stale.** The center confirms what the gateway holds with every heartbeat. When it has not for
  ``max_staleness_s`` (the center away, or the gateway behind), the policy is stale: assets with
  ``on_stale = "closed"`` refuse every request with reason "policy stale" (``policy_stale``), those
  with ``"static"`` keep the last bundle and say so in the audit once an hour
  (``policy_stale_static``). The next confirmation reopens them (``policy_fresh``).

A gateway configured for a center never starts without a verified bundle: :meth:`CenterLink.initial`
takes the one on disk or waits for the center.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import pki
from gateway.audit import AuditLog
from gateway.center.bundles import BundleError, Document, key_id, parse_key, verify
from gateway.credentials import Credentials
from gateway.identity import PeerPin
from gateway.locks import Lock, LockError, LockSet
from gateway.policy_store import PolicyStore
from gateway.runtime import cancel_tasks
from gateway.tls import client_context
from policies import Policy, PolicyError, parse_policy

log = logging.getLogger("ztgate.center_link")

__all__ = ["BUNDLE_FILE", "LOCKS_FILE", "CenterLink", "CenterUnavailableError"]

BUNDLE_FILE = "bundle.json"
LOCKS_FILE = "locks.json"
STATE_FILE = "bundle-state.json"
STATIC_AUDIT_INTERVAL_S = 3600.0
_STATE_WRITE_INTERVAL_S = 10.0


class CenterUnavailableError(RuntimeError):
    """No verified bundle on disk and none from the center in time: the gateway must not start."""


class CenterLink:
    def __init__(
        self,
        credentials: Credentials,
        audit: AuditLog,
        *,
        max_staleness_s: float = 86400.0,
        receive_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.info = credentials.center()
        self._audit = audit
        self.max_staleness_s = max_staleness_s
        self._receive_timeout_s = receive_timeout_s
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        for text in self.info.signing_keys:
            self._trust(text)
        self.store: PolicyStore | None = None
        self.locks = LockSet(clock)
        self.revision = 0  # the policy revision in force
        self.last_contact: float | None = None  # when the center last confirmed what we hold
        self.last_heartbeat_at = 0.0  # the center's issued_at, never accepted going backwards
        self.connected = False
        self.stale = False
        self.received = 0
        self.refused = 0
        self.last_refusal: str | None = None
        self._pending: Document | None = None
        self._wake = asyncio.Event()
        self._first = asyncio.Event()
        self._first_policy: Policy | None = None
        self._next_static_audit = 0.0
        self._state_written = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------ trust

    def _trust(self, text: str) -> None:
        try:
            key = parse_key(text)
        except BundleError as exc:
            log.error("ignoring a signing key: %s", exc)
            return
        self._keys[key_id(key)] = key

    @property
    def bundle_path(self) -> Path:
        return self.credentials.directory / BUNDLE_FILE

    # -------------------------------------------------------------------------- documents

    def handle(self, envelope: bytes) -> None:
        """One document from the stream (or any other way): verify, then act on it or refuse it."""
        self.received += 1
        try:
            document = self._verified(envelope)
        except BundleError as exc:
            self._refuse(str(exc))
            return
        self._learn_keys(document)
        if document.kind == "heartbeat":
            self._heartbeat(document)
        elif document.kind == "locks":
            self._take_locks(document)
        elif document.revision < self.revision:
            self._refuse(f"revision {document.revision} is older than revision {self.revision} in force")
        elif document.revision == self.revision:
            self._confirmed()
            self._keep(document)  # a freshly signed copy of what we hold
        else:
            self._pending = document
            self._wake.set()

    def _verified(self, envelope: bytes) -> Document:
        document = verify(envelope, self._keys)
        if document.kind != "heartbeat" and document.fields["trust_domain"] != self.info.trust_domain:
            raise BundleError(f"for trust domain {document.fields['trust_domain']!r}, not ours")
        if document.kind == "policy" and float(document.fields["not_after"]) <= self._clock():
            raise BundleError(f"revision {document.revision} expired (not_after passed)")
        return document

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.last_refusal = reason
        log.error("bundle refused: %s", reason)
        self._audit.emit({"event": "bundle_refused", "reason": reason, "policy_revision": str(self.revision)})

    def _learn_keys(self, document: Document) -> None:
        announced = [k for k in document.fields.get("next_keys", []) if k not in self.info.signing_keys]
        if not announced:
            return
        for text in announced:
            self._trust(text)
        self.info = replace(self.info, signing_keys=(*self.info.signing_keys, *announced))
        self.credentials.update_center(self.info)
        self._audit.emit({"event": "signing_key_trusted", "keys": announced})

    def _heartbeat(self, document: Document) -> None:
        if document.issued_at < self.last_heartbeat_at:
            self._refuse("a heartbeat older than the last one")
            return
        self.last_heartbeat_at = document.issued_at
        heads = document.fields["heads"]
        if int(heads.get("policy", 0)) <= self.revision and int(heads.get("locks", 0)) <= self.locks.revision:
            self._confirmed()

    def _confirmed(self) -> None:
        now = self._clock()
        self.last_contact = now
        if now - self._state_written >= _STATE_WRITE_INTERVAL_S:
            self._write_state()
        if self.stale:
            self._set_stale(False, 0.0)

    # ------------------------------------------------------------------------------ locks

    def _take_locks(self, document: Document) -> None:
        """Install a ``locks`` document at once (no compiling): new handshakes that match are refused
        from here on, and the listeners cut the live sessions that match."""
        if document.revision < self.locks.revision:
            self._refuse(f"locks revision {document.revision} is older than {self.locks.revision} in force")
            return
        try:
            locks = [Lock.from_json(item) for item in document.fields["locks"]]
        except (LockError, AttributeError) as exc:
            self._refuse(f"locks revision {document.revision}: {exc}")
            return
        self._keep(document, LOCKS_FILE)
        if document.revision == self.locks.revision:
            return  # a freshly signed copy of what we hold
        added, removed = self.locks.replace(document.revision, locks)
        self._audit.emit(
            {
                "event": "locks_loaded",
                "locks_revision": document.revision,
                "added": [lock.id for lock in added],
                "removed": [lock.id for lock in removed],
                "in_force": len(locks),
            }
        )

    def _expire_locks(self) -> None:
        for lock in self.locks.expired():
            self._audit.emit({"event": "lock_expired", "lock": lock.id, "target": lock.target})

    # ------------------------------------------------------------------------------ apply

    async def _apply_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            document, self._pending = self._pending, None
            if document is None or document.revision <= self.revision:
                continue
            try:
                await self._apply(document)
            except Exception:  # a listener's bug must not end the subscription
                log.exception("applying revision %d failed", document.revision)

    async def _compile(self, document: Document) -> Policy:
        text = str(document.fields["policy"])
        source = f"center revision {document.revision}"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: parse_policy(text, source, revision=str(document.revision))
        )

    async def _apply(self, document: Document) -> None:
        try:
            policy = await self._compile(document)
        except PolicyError as error:
            self._refuse(f"revision {document.revision} does not load here: {error}")
            return
        previous = self.revision
        self.revision = document.revision
        self._keep(document)
        if self.store is None:
            self._first_policy = policy
            self._first.set()
        else:
            detail = {"center": self.info.center_id, "bundle_issued_at": document.issued_at}
            await self.store.install(policy, "center", detail)
        if previous and document.revision > previous + 1:
            log.info("caught up from revision %d to %d", previous, document.revision)
        self._confirmed()

    def _keep(self, document: Document, name: str = BUNDLE_FILE) -> None:
        pki.write_files([(self.credentials.directory / name, document.envelope, pki.CERT_MODE)])

    # ---------------------------------------------------------------------------- startup

    async def initial(self, timeout_s: float) -> Policy:
        """The policy to start with: the verified bundle on disk, else the center's first one."""
        self._load_saved_locks()
        saved = await self._load_saved()
        if saved is not None:
            return saved
        self._tasks.append(asyncio.get_running_loop().create_task(self._apply_loop()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._stream()))
        try:
            await asyncio.wait_for(self._first.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise CenterUnavailableError(
                f"no verified policy bundle: none in {self.bundle_path} and none from {self.info.url} "
                f"within {timeout_s:g} s"
            ) from None
        assert self._first_policy is not None
        return self._first_policy

    async def _load_saved(self) -> Policy | None:
        try:
            envelope = self.bundle_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = self._verified(envelope)
            if document.kind != "policy":
                raise BundleError(f"a {document.kind} document, not a policy")
            policy = await self._compile(document)
        except (BundleError, PolicyError) as exc:
            self._refuse(f"{self.bundle_path}: {exc}")
            return None
        self.revision = document.revision
        self.last_contact = self._read_state().get("last_contact")
        if self.last_contact is None:
            self.last_contact = document.issued_at
        self._audit.emit(
            {"event": "bundle_loaded", "file": str(self.bundle_path), "policy_revision": str(self.revision)}
        )
        return policy

    def _load_saved_locks(self) -> None:
        """The locks kept on disk, so that a restarted gateway enforces them before the center answers
        (or without it). Their document's ``not_after`` does not matter: a lock only takes access away."""
        path = self.credentials.directory / LOCKS_FILE
        try:
            envelope = path.read_bytes()
        except FileNotFoundError:
            return
        try:
            document = self._verified(envelope)
            if document.kind != "locks":
                raise BundleError(f"a {document.kind} document, not locks")
            locks = [Lock.from_json(item) for item in document.fields["locks"]]
        except (BundleError, LockError, AttributeError) as exc:
            self._refuse(f"{path}: {exc}")
            return
        self.locks.replace(document.revision, locks)
        self._audit.emit(
            {
                "event": "locks_loaded",
                "file": str(path),
                "locks_revision": document.revision,
                "in_force": len(locks),
            }
        )

    def _read_state(self) -> dict[str, Any]:
        try:
            state = orjson.loads((self.credentials.directory / STATE_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self) -> None:
        self._state_written = self._clock()
        state = {"last_contact": self.last_contact, "revision": self.revision}
        try:
            pki.write_files([(self.credentials.directory / STATE_FILE, orjson.dumps(state), pki.CERT_MODE)])
        except OSError as exc:
            log.warning("cannot write %s: %s", STATE_FILE, exc)

    def start(self, store: PolicyStore) -> None:
        """Feed ``store`` from now on; keep the subscription and the staleness watch running."""
        self.store = store
        loop = asyncio.get_running_loop()
        if not self._tasks:
            self._tasks.append(loop.create_task(self._apply_loop()))
            self._tasks.append(loop.create_task(self._stream()))
        self._tasks.append(loop.create_task(self._watch_staleness()))

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        self._tasks.clear()
        if self.last_contact is not None:
            self._write_state()

    # ----------------------------------------------------------------------------- stream

    async def _stream(self) -> None:
        backoff_s = 0.1
        while True:
            try:
                await self._subscribe()
                backoff_s = 0.1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._disconnected(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
            backoff_s = min(backoff_s * 2, 5.0)

    async def _subscribe(self) -> None:
        tls = self.credentials.tls  # the files as they are now: a renewed certificate is used from here on
        context = client_context(tls.cert, tls.key, tls.ca, peer=PeerPin(self.info.trust_domain, "center"))
        timeout = aiohttp.ClientWSTimeout(ws_receive=self._receive_timeout_s)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{self.info.url}/v1/stream",
                params={"policy": str(self.revision), "locks": str(self.locks.revision)},
                ssl=context,
                timeout=timeout,
                max_msg_size=0,
                autoping=True,
            ) as ws,
        ):
            if not self.connected:
                self.connected = True
                self._audit.emit({"event": "center_connected", "center": self.info.url})
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    self.handle(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
        self._disconnected("the center closed the subscription")

    def _disconnected(self, reason: str) -> None:
        if not self.connected:
            log.debug("center %s still unreachable: %s", self.info.url, reason)
            return
        log.warning("center %s unreachable: %s", self.info.url, reason)
        if self.connected:
            self.connected = False
            self._audit.emit(
                {"event": "center_unreachable", "center": self.info.url, "reason": reason, **self.staleness()}
            )

    # -------------------------------------------------------------------------- staleness

    def staleness(self) -> dict[str, Any]:
        age = None if self.last_contact is None else max(0.0, self._clock() - self.last_contact)
        return {
            "stale_s": None if age is None else round(age, 1),
            "max_staleness_s": self.max_staleness_s,
            "stale": self.stale,
        }

    async def _watch_staleness(self) -> None:
        interval_s = min(1.0, self.max_staleness_s / 10)
        while True:
            await asyncio.sleep(interval_s)
            self._expire_locks()
            now = self._clock()
            age = now - (self.last_contact if self.last_contact is not None else now)
            if age > self.max_staleness_s and not self.stale:
                self._set_stale(True, age)
            elif self.stale and now >= self._next_static_audit:
                self._audit_static(age)

    def _assets(self, on_stale: str) -> list[str]:
        assert self.store is not None
        return sorted(a.name for a in self.store.verified.assets.values() if a.on_stale == on_stale)

    def _set_stale(self, stale: bool, age: float) -> None:
        if self.store is None:
            return
        self.stale = stale
        if not stale:
            self.store.set_refusals({})
            self._audit.emit({"event": "policy_fresh", "policy_revision": str(self.revision)})
            return
        reason = (
            f"policy stale: the center has not confirmed revision {self.revision} for {age:.0f} s "
            f"(max_staleness_s {self.max_staleness_s:g})"
        )
        closed = self._assets("closed")
        self.store.set_refusals(dict.fromkeys(closed, reason))
        self._audit.emit(
            {
                "event": "policy_stale",
                "policy_revision": str(self.revision),
                "closed": closed,
                "static": self._assets("static"),
                "stale_s": round(age, 1),
                "max_staleness_s": self.max_staleness_s,
            }
        )
        self._audit_static(age)

    def _audit_static(self, age: float) -> None:
        self._next_static_audit = self._clock() + STATIC_AUDIT_INTERVAL_S
        static = self._assets("static")
        if static:
            self._audit.emit(
                {
                    "event": "policy_stale_static",
                    "assets": static,
                    "policy_revision": str(self.revision),
                    "stale_s": round(age, 1),
                    "reason": 'on_stale = "static": enforcing the last verified bundle',
                }
            )
