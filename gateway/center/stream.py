"""The subscription: one WebSocket per gateway, over which the center sends signed documents.

A gateway connects with the revision it holds of each kind (``GET /v1/stream?policy=7&locks=3``). The center
then sends, most urgent kind first (:data:`gateway.center.bundles.KIND_ORDER`), the newest document of
every kind the gateway lacks, and again whenever a change is committed: its own, or another replica's
announced through PostgreSQL. Only the newest document of a kind is ever queued, so catching up after
a reconnect is one document per kind, and a later kind never waits behind a long queue of another.
While nothing changes, a signed heartbeat with the heads goes out every ``heartbeat_s``: it tells the
gateway that what it holds is still the newest, which is what keeps its policy from going stale.

On connecting, a gateway always gets the newest policy document once even when it holds that
revision: a freshly signed copy (new ``issued_at`` and ``not_after``) to keep on its disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from gateway.center.authority import Authority
from gateway.center.bundles import KIND_ORDER, sign
from gateway.center.store import Store

log = logging.getLogger("ztgate.center.stream")

__all__ = ["Hub", "Publisher", "serve_stream"]


class Hub:
    """Wakes every stream when a change is committed; a counter says whether one happened meanwhile."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def changed(self, topic: str = "*") -> None:
        self.version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seen: int, timeout_s: float) -> None:
        """Return when the version passes ``seen``, or after ``timeout_s``."""
        if self.version != seen:
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            pass


class Publisher:
    """Signs the documents streams send; a signed policy document is reused for a while, so a push to
    a hundred gateways is signed once."""

    def __init__(
        self,
        store: Store,
        authority: Authority,
        *,
        validity_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._authority = authority
        self._validity_s = validity_s
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, bytes]] = {}
        self.builders: dict[str, Callable[[int], Any]] = {"policy": self._policy, "locks": self._locks}

    async def document(self, kind: str, head: int) -> bytes | None:
        now = self._clock()
        cached = self._cache.get((kind, head))
        # Re-signed once a quarter of its validity has passed, so what a gateway keeps stays loadable.
        if cached is not None and now - cached[0] < self._validity_s / 4:
            return cached[1]
        fields = await self.builders[kind](head)
        if fields is None:
            return None
        fields.update({"issued_at": now, "not_after": now + self._validity_s})
        envelope = sign(self._authority.signing_key, fields, self._authority.next_keys)
        self._cache = {key: value for key, value in self._cache.items() if key[0] != kind}
        self._cache[(kind, head)] = (now, envelope)
        return envelope

    async def _policy(self, revision: int) -> dict[str, Any] | None:
        found = await self._store.policy_revision(revision)
        if found is None:
            return None
        return {
            "kind": "policy",
            "revision": found.revision,
            "policy": found.policy,
            "policy_sha256": found.sha256,
            "trust_domain": self._authority.trust_domain,
        }

    async def _locks(self, revision: int) -> dict[str, Any]:
        # The locks in force now, whatever head they were asked under: a later change only bumps the head
        # again, and the gateway ignores locks whose TTL ran out after signing.
        return {
            "kind": "locks",
            "revision": revision,
            "locks": [lock.to_json() for lock in await self._store.locks()],
            "trust_domain": self._authority.trust_domain,
        }

    def heartbeat(self, heads: dict[str, int]) -> bytes:
        fields = {"kind": "heartbeat", "heads": heads, "issued_at": self._clock()}
        return sign(self._authority.signing_key, fields, self._authority.next_keys)


def parse_cursors(query: dict[str, str]) -> dict[str, int]:
    """The revisions a gateway says it holds; unknown kinds and junk are refused by the caller."""
    held: dict[str, int] = {}
    for kind, text in query.items():
        if kind not in KIND_ORDER:
            raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KIND_ORDER)})")
        if not text.isdigit() or len(text) > 18:
            raise ValueError(f"{kind}={text!r}: expected a revision number")
        held[kind] = int(text)
    return held


async def serve_stream(
    ws: web.WebSocketResponse,
    held: dict[str, int],
    store: Store,
    publisher: Publisher,
    hub: Hub,
    heartbeat_s: float,
) -> None:
    """Send what the gateway lacks until it goes away."""
    reader = asyncio.get_running_loop().create_task(_drain(ws))
    refresh = {"policy"}  # sent once on connecting, even when the gateway holds it (see module doc)
    try:
        while not ws.closed and not reader.done():
            seen = hub.version
            heads = await store.heads()
            sent = False
            for kind in KIND_ORDER:
                head = heads.get(kind, 0)
                if head <= 0 or (head <= held.get(kind, 0) and kind not in refresh):
                    continue
                envelope = await publisher.document(kind, head)
                if envelope is not None:
                    await ws.send_bytes(envelope)
                    held[kind] = head
                    sent = True
            refresh.clear()
            if not sent:
                await ws.send_bytes(publisher.heartbeat(heads))
            waiter = asyncio.ensure_future(hub.wait(seen, heartbeat_s))
            await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    except (ConnectionResetError, RuntimeError) as exc:  # the gateway went away mid-send
        log.debug("stream ended: %s", exc)
    finally:
        reader.cancel()


async def _drain(ws: web.WebSocketResponse) -> None:
    # Gateways send nothing after connecting; reading is what notices that they closed.
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
