"""asyncua's private internals behind gateway/opcua/asyncua_adapter.py: the installed asyncua has every one
of them (a release that renames one fails here, naming it and the version, before any relay misbehaves),
and no other module of the gateway touches them. That the adapter relays right is the e2e tests' part
(tests/e2e/test_opcua.py, through asyncua servers and clients)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from asyncua.client.ua_client import UASocketProtocol
from asyncua.common.connection import SecureConnection

from gateway.opcua import asyncua_adapter
from gateway.opcua.asyncua_adapter import INTERNALS, missing_internals

ROOT = Path(__file__).resolve().parent.parent.parent
ADAPTER = ROOT / "gateway" / "opcua" / "asyncua_adapter.py"
# How the gateway reaches asyncua's internals: its client's socket protocol, and the names of INTERNALS
# that no code of ours has of its own.
_REACHES = ("uaclient.protocol", "set_protocol(FastReplies")
_OURS_TOO = frozenset(("_request_id", "_sequence_number", "_peer_sequence_number", "_limits"))


def test_the_installed_asyncua_has_every_internal_the_adapter_uses() -> None:
    problems = missing_internals()
    assert not problems, "asyncua changed under the gateway's adapter:\n" + "\n".join(problems)


def test_a_method_gone_from_asyncua_is_named_with_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(UASocketProtocol, "_send_request")
    assert missing_internals() == [
        f"asyncua {version('asyncua')}: UASocketProtocol has no attribute '_send_request', which "
        "gateway/opcua/asyncua_adapter.py relies on"
    ]


def test_an_attribute_no_longer_set_by_asyncua_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributes set in ``__init__`` (the callback map, the secure connection's counters) are looked for
    on instances."""
    protocol_init = UASocketProtocol.__init__
    connection_init = SecureConnection.__init__

    def protocol_without_map(self: UASocketProtocol, *args: object, **kwargs: object) -> None:
        protocol_init(self, *args, **kwargs)
        del self._callbackmap

    def connection_without_parts(self: SecureConnection, *args: object, **kwargs: object) -> None:
        connection_init(self, *args, **kwargs)
        del self._incoming_parts

    monkeypatch.setattr(UASocketProtocol, "__init__", protocol_without_map)
    monkeypatch.setattr(SecureConnection, "__init__", connection_without_parts)
    problems = missing_internals()
    assert len(problems) == 2
    assert "UASocketProtocol has no attribute '_callbackmap'" in problems[0]
    assert "SecureConnection has no attribute '_incoming_parts'" in problems[1]
    assert all(f"asyncua {version('asyncua')}:" in problem for problem in problems)


def test_no_other_gateway_module_touches_asyncua_internals() -> None:
    private = sorted(
        {name for names in INTERNALS.values() for name in names if name.startswith("_")} - _OURS_TOO
    )
    pattern = re.compile(
        "|".join([rf"\.{re.escape(name)}\b" for name in private] + [re.escape(text) for text in _REACHES])
    )
    assert pattern.search(ADAPTER.read_text()), "the pattern finds nothing even in the adapter"
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        if path != ADAPTER
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "asyncua's internals outside gateway/opcua/asyncua_adapter.py:\n" + "\n".join(found)


def test_the_adapter_is_the_module_its_messages_name() -> None:
    # In the compiled build the module is the extension beside the source (asyncua_adapter.cpython-*.so).
    loaded = Path(asyncua_adapter.__file__).resolve()
    assert loaded.with_name(loaded.name.split(".")[0] + ".py") == ADAPTER
