"""The decision memo of repeated OPC UA requests (gateway/opcua/decisions.py): the gateway's decisions are
kept on the session's side, by the codec's cache entry, and only given back under the view and namespace
array they were made under; bounded as the codec's cache is."""

from __future__ import annotations

from typing import Any, cast

from gateway.opcua.decisions import Decided, DecisionMemo
from policies import SubjectView
from protocols.opcua.messages import Repeat, RepeatCache
from protocols.opcua.services import SERVICES_BY_NAME

READ = SERVICES_BY_NAME["Read"]
NAMESPACES = ("http://opcfoundation.org/UA/", "urn:ztgate:sim:plant")


def repeat(number: int) -> Repeat:
    return Repeat(number.to_bytes(4, "little"), READ, None, (), (4, 6))


def decided(view: Any, namespaces: tuple[str, ...] = NAMESPACES) -> Decided:
    return Decided(cast(SubjectView, view), namespaces, [], [], True, True, None)


def test_decisions_come_back_only_under_the_view_and_namespaces_they_were_made_under() -> None:
    memo = DecisionMemo()
    view, reloaded = object(), object()
    entry, other = repeat(1), repeat(1)  # equal bytes, another entry: the codec's entries are the keys
    kept = decided(view)
    memo.keep(entry, kept)
    assert memo.get(entry, cast(SubjectView, view), NAMESPACES) is kept
    assert memo.get(other, cast(SubjectView, view), NAMESPACES) is None
    assert memo.get(entry, cast(SubjectView, reloaded), NAMESPACES) is None
    assert memo.get(entry, cast(SubjectView, view), tuple(NAMESPACES)[::-1]) is None  # the device restarted
    memo.clear()
    assert memo.get(entry, cast(SubjectView, view), NAMESPACES) is None


def test_the_memo_holds_no_more_entries_than_the_codecs_cache() -> None:
    memo = DecisionMemo()
    view = object()
    entries = [repeat(i) for i in range(RepeatCache.MAX_ENTRIES + 1)]
    for entry in entries:
        memo.keep(entry, decided(view))
    assert memo.get(entries[0], cast(SubjectView, view), NAMESPACES) is None  # the oldest went
    assert all(memo.get(e, cast(SubjectView, view), NAMESPACES) is not None for e in entries[1:])
    memo.keep(entries[1], decided(view))  # kept again: no entry goes for it
    assert memo.get(entries[2], cast(SubjectView, view), NAMESPACES) is not None
