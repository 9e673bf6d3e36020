"""The committed captures are still what the installed peers send: each scenario is run again live
(cpppo's simulator, pycomm3 or pylogix, through the recording relay) and every frame goes through the codec.
Connection ids, serial numbers and session handles are chosen afresh each run, so the comparison is of what
the policy sees: the requests' names, tags, counts and values, and the replies' statuses."""

from __future__ import annotations

import pytest

from protocols.enip import (
    CipProtocolError,
    EncapsulationConnection,
    connected_message,
    flatten,
    parse_request,
    parse_response,
    parse_send_data,
    unconnected_message,
)
from tests.protocols.enip.cip_capture import SCENARIOS, capture
from tests.protocols.enip.cip_captures import CAPTURES

Summary = list[tuple[object, ...]]


def summarize(frames: list[tuple[str, bytes]]) -> Summary:
    out: Summary = []
    for direction, data in frames:
        connection = EncapsulationConnection()
        connection.receive_data(data)
        message = connection.next_message()
        assert message is not None and message.encode() == data
        if message.command not in (0x6F, 0x70) or not message.data:
            out.append((direction, message.command, message.status, len(message.data)))
            continue
        send = parse_send_data(message)
        raw = (
            unconnected_message(message, send)
            if message.command == 0x6F
            else connected_message(message, send)[2]
        )
        if direction == "reply":
            reply = parse_response(raw)
            out.append((direction, reply.service, reply.general_status))
            continue
        try:
            leaves = flatten(parse_request(raw))
        except CipProtocolError as error:
            out.append((direction, "refused", error.service, error.general_status))
            continue
        out += [
            (direction, leaf.name, leaf.tag, leaf.element_count, leaf.values, leaf.depth) for leaf in leaves
        ]
    return out


@pytest.mark.parametrize("scenario", ["pycomm3_logix", "pycomm3_generic", "pylogix"])
def test_live_peers_send_what_was_captured(scenario: str) -> None:
    live = capture(SCENARIOS[scenario])
    committed = [(direction, bytes.fromhex(frame)) for direction, frame in CAPTURES[scenario]]
    assert summarize(live) == summarize(committed)
