"""The center's API: documented route by route, bad input answered with a 4xx JSON error that changes
nothing, roles from the store, no client certificate refused; the policy history calls."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.center.api import PUBLIC, ROUTES, TOKEN
from gateway.center.client import CenterClient, CenterError
from gateway.center.config import load_center_config
from gateway.center.service import Center
from gateway.center.setup import init_center, issue_credentials
from gateway.credentials import Credentials
from gateway.identity import PeerPin
from gateway.pki import issue
from gateway.tls import client_context, pinning_context
from tests.center.harness import TD, modbus_policy, read_rule
from tests.peers.modbus_server import REPO_ROOT

OPENAPI = REPO_ROOT / "docs" / "center-openapi.json"
MAX_BODY = 64 * 1024
POLICY = modbus_policy({"plc-1": (502, "closed")}, read_rule(["plc-1"]))


class Running:
    def __init__(self, center: Center, admin: Credentials, root: Path) -> None:
        self.center = center
        self.admin = admin
        self.root = root
        self.url = f"https://127.0.0.1:{center.port}"
        self.clients: list[CenterClient] = []

    async def credentials(self, identity: str, role: str) -> CenterClient:
        """A client for ``identity`` with ``role`` in the store (credentials made locally)."""
        await self.center.store.put_identity(identity, role, "test")
        found = await issue_credentials(self.center.config, self.center.store, identity, self.root / role)
        return self.client(found)

    def client(self, credentials: Credentials) -> CenterClient:
        client = CenterClient.for_credentials(credentials, url=self.url)
        self.clients.append(client)
        return client

    async def state(self) -> tuple[Any, ...]:
        """Everything a refused request must leave as it was (the audit may only grow)."""
        store = self.center.store
        tokens = await store.db.fetch("SELECT hash, used_at FROM tokens ORDER BY hash")
        return (await store.heads(), tokens, await store.identities(), await store.policy_log())


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config, admin = await init_center(tmp_path / "center", TD, listen="127.0.0.1:0")
    text = config.source.read_text().replace(
        'keys = "keys"\n', f'keys = "keys"\nmax_body_bytes = {MAX_BODY}\n'
    )
    config.source.write_text(text)
    center = Center(load_center_config(config.source))
    await center.start()
    found = Running(center, admin, tmp_path)
    try:
        yield found
    finally:
        for client in found.clients:
            await client.close()
        await center.stop()


def test_the_openapi_file_documents_every_route_with_its_roles() -> None:
    doc = orjson.loads(OPENAPI.read_bytes())
    documented = {
        (method.upper(), path, tuple(sorted(operation["x-roles"])))
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
    }
    routes = {
        (r.method, r.path, (r.access,) if r.access in (PUBLIC, TOKEN) else tuple(sorted(r.access)))
        for r in ROUTES
    }
    assert documented == routes
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            assert any(code.startswith("2") or code == "101" for code in operation["responses"]), path
            body = operation.get("requestBody")
            if body is not None:  # unknown fields are refused, and the document says so
                assert body["content"]["application/json"]["schema"]["additionalProperties"] is False


async def test_without_a_client_certificate_only_the_public_routes_answer(running: Running) -> None:
    anonymous = CenterClient(running.url, pinning_context(lambda _: None))
    running.clients.append(anonymous)
    info = await anonymous.call("GET", "/v1/info")
    assert info["fingerprint"] == running.center.authority.fingerprint()
    for method, path, body in (
        ("GET", "/v1/whoami", None),
        ("POST", "/v1/policy", {"policy": POLICY}),
        ("POST", "/v1/tokens", {"role": "agent", "id": f"spiffe://{TD}/agent/a/b", "ttl_s": 60}),
        ("GET", "/v1/stream", None),
    ):
        with pytest.raises(CenterError) as refused:
            await anonymous.call(method, path, body)
        assert refused.value.status == 401 and "client certificate is required" in refused.value.message
    assert await running.center.store.heads() == {"policy": 0, "locks": 0}


async def _raw(
    running: Running, method: str, path: str, data: bytes, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    """A request with exactly these bytes, as the admin."""
    tls = running.admin.tls
    context = client_context(tls.cert, tls.key, tls.ca, peer=PeerPin(TD, "center"))
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, running.url + path, data=data, headers={"Content-Type": content_type}, ssl=context
        ) as response,
    ):
        return response.status, orjson.loads(await response.read())


async def test_bad_input_gets_a_4xx_json_error_and_changes_nothing(running: Running) -> None:
    admin = running.client(running.admin)
    await admin.call("POST", "/v1/policy", {"policy": POLICY})
    before = await running.state()
    j = orjson.dumps
    broken = 'trust_domain = "plant1.example"\n[assets.x]\n'
    agent, user, foreign = f"spiffe://{TD}/agent/a/b", f"spiffe://{TD}/user/x", "spiffe://x.ex/agent/a/b"
    json_cases: list[tuple[str, str, bytes, int, str]] = [
        ("POST", "/v1/policy", b'{"policy": "x"', 400, "malformed JSON"),
        ("POST", "/v1/policy", b"[1, 2]", 400, "expected a JSON object"),
        ("POST", "/v1/policy", j({"policy": POLICY, "approve": True}), 400, "unknown fields: approve"),
        ("POST", "/v1/policy", j({"policy": 5}), 400, "field 'policy': expected str"),
        ("POST", "/v1/policy", j({}), 400, "missing fields: policy"),
        ("POST", "/v1/policy", j({"policy": "x" * (MAX_BODY + 1)}), 413, ""),
        ("POST", "/v1/policy", j({"policy": broken}), 422, "policy refused"),
        ("POST", "/v1/policy", j({"policy": POLICY.replace(TD, "other.example")}), 422, "trust domain other"),
        ("POST", "/v1/policy/rollback", j({"revision": 9}), 404, "no policy revision 9"),
        ("POST", "/v1/tokens", j({"role": "gateway", "id": user, "ttl_s": 60}), 400, "is for gateway"),
        ("POST", "/v1/tokens", j({"role": "root", "id": user, "ttl_s": 60}), 400, "unknown role"),
        ("POST", "/v1/tokens", j({"role": "agent", "id": agent, "ttl_s": 1e9}), 400, "ttl_s must be in"),
        ("POST", "/v1/tokens", j({"role": "agent", "id": foreign, "ttl_s": 6}), 400, "not in trust"),
        ("GET", "/v1/policy/revisions/abc", b"", 400, "expected a revision number"),
        ("GET", "/v1/policy/revisions?limit=5&order=asc", b"", 400, "unknown query parameters: order"),
        ("GET", "/v1/policy/diff?from=1", b"", 400, "give both"),
        ("GET", "/v1/nothing", b"", 404, ""),
        ("DELETE", "/v1/policy", b"", 405, ""),
    ]  # fmt: skip
    cases = [(m, p, d, "application/json", st, msg) for m, p, d, st, msg in json_cases]
    cases.append(("POST", "/v1/policy", b"policy", "text/plain", 415, "expected a JSON body"))
    for method, path, data, content_type, status, message in cases:
        found_status, body = await _raw(running, method, path, data, content_type)
        assert (found_status, body["error"]["status"]) == (status, status), (path, data[:60], body)
        assert message in body["error"]["message"], (path, body)
    _, body = await _raw(
        running,
        "POST",
        "/v1/policy",
        orjson.dumps({"policy": 'trust_domain = "plant1.example"\n[assets.x]\n'}),
    )
    assert body["error"]["issues"][0]["path"] == "assets.x"
    assert await running.state() == before


async def test_roles_come_from_the_store_and_a_wrong_one_is_refused_and_audited(running: Running) -> None:
    viewer = await running.credentials(f"spiffe://{TD}/user/victor", "viewer")
    agent = await running.credentials(f"spiffe://{TD}/agent/site1/hmi", "agent")
    before = await running.state()
    for client, method, path, body in (
        (viewer, "POST", "/v1/policy", {"policy": POLICY}),
        (viewer, "POST", "/v1/tokens", {"role": "admin", "id": f"spiffe://{TD}/user/victor", "ttl_s": 60}),
        (agent, "GET", "/v1/policy/revisions", None),
        (agent, "POST", "/v1/identities", {"id": f"spiffe://{TD}/agent/site1/hmi", "role": "gateway"}),
    ):
        with pytest.raises(CenterError) as refused:
            await client.call(method, path, body)
        assert refused.value.status == 403 and "needs one of" in refused.value.message
    assert await running.state() == before
    assert (await viewer.call("GET", "/v1/whoami"))["role"] == "viewer"
    assert (await viewer.call("GET", "/v1/policy/revisions"))["revisions"] == []
    refusals = await running.center.store.audit_log()
    assert [(e["actor"], e["detail"]["path"]) for e in refusals if e["event"] == "api_refused"] == [
        (f"spiffe://{TD}/user/victor", "/v1/policy"),
        (f"spiffe://{TD}/user/victor", "/v1/tokens"),
        (f"spiffe://{TD}/agent/site1/hmi", "/v1/policy/revisions"),
        (f"spiffe://{TD}/agent/site1/hmi", "/v1/identities"),
    ]
    # A certificate from the CA for an identity the store does not know: no role, refused.
    keys = running.center.config.keys
    stranger = issue(keys, f"spiffe://{TD}/user/mallory", out_dir=running.root / "mallory")
    context = client_context(stranger.cert, stranger.key, keys / "ca.pem", peer=PeerPin(TD, "center"))
    client = CenterClient(running.url, context)
    running.clients.append(client)
    with pytest.raises(CenterError) as refused:
        await client.call("GET", "/v1/whoami")
    assert refused.value.status == 403 and "has role none" in refused.value.message


async def test_policy_history_log_show_diff_rollback_through_the_command_line(
    running: Running, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ZTGATE_CREDENTIALS": str(running.admin.directory)}

    async def ztgate(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "center", *args, "--center", running.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
        out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode()

    first, second = tmp_path / "one.toml", tmp_path / "two.toml"
    first.write_text(POLICY)
    second.write_text(POLICY.replace('address = "0-99"', 'address = "0-9"'))
    assert (await ztgate("policy", "push", str(first), "--comment", "first"))[0] == 0
    status, out = await ztgate("policy", "push", str(second))
    assert (
        status == 0
        and out.startswith("revision 2 (was 1)")
        and '+modbus = [{ fc = [3], address = "0-9" }]' in out
    )
    broken = tmp_path / "broken.toml"
    broken.write_text('trust_domain = "plant1.example"\n[assets.x]\n')
    status, out = await ztgate("policy", "push", str(broken))
    assert status == 1 and f"{broken}:2: assets.x" in out
    status, out = await ztgate("policy", "rollback", "1")
    assert status == 0 and out.startswith("revision 3: the policy of revision 1 again")
    status, out = await ztgate("policy", "log")
    assert status == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["3", "2", "1"]
    assert "(rollback to 1)" in out.splitlines()[1]
    assert await ztgate("policy", "show", "3") == (0, POLICY)
    status, out = await ztgate("policy", "diff", "2", "3")
    assert status == 0 and out.startswith("--- revision 2\n+++ revision 3\n")
    status, out = await ztgate(
        "token", "create", "--role", "agent", "--id", f"spiffe://{TD}/agent/s/h", "--ttl", "30m"
    )
    assert status == 0 and "ztgate enroll --center" in out and "--fingerprint sha256:" in out
    status, out = await ztgate("policy", "show", "9")
    assert status == 1 and "no policy revision 9 (HTTP 404)" in out
