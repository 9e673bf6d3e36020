"""The upstream pools' fair queue (gateway/upstream.py ``FairQueue``): the order in which identities'
requests leave it for the device, and what a lane that was empty gets (issue 16, point 2)."""

from __future__ import annotations

from typing import cast

from gateway.upstream import QUEUED, Client, FairQueue, Pending


class _Session:
    def __init__(self, identity: str) -> None:
        self.identity = identity  # all the queue reads of a session


def _requests(identity: str, count: int, deadline: float = 100.0) -> list[Pending]:
    session = cast(Client, _Session(identity))
    out = []
    for _ in range(count):
        pending = Pending(session, 0.0)
        pending.deadline = deadline
        out.append(pending)
    return out


def _identities(queue: FairQueue, count: int) -> list[str]:
    out = []
    for _ in range(count):
        pending = queue.pop()
        assert pending is not None
        out.append(pending.session.identity)
    return out


def _order(queue: FairQueue) -> list[str]:
    out = []
    while (pending := queue.pop()) is not None:
        out.append(pending.session.identity)
    return out


def test_lanes_take_turns_one_request_each() -> None:
    queue = FairQueue(64)
    for pending in _requests("flooder", 5) + _requests("other", 2):
        assert queue.offer(pending, pending.session.identity) == (True, None)
    # The flooder's lane was empty when its first request came: that one goes first, then the other
    # lane's (empty too when it came), then the turn.
    assert _order(queue) == ["flooder", "other", "flooder", "other", "flooder", "flooder", "flooder"]
    assert len(queue) == 0


def test_a_new_lane_is_served_before_a_full_lane_goes_on() -> None:
    queue = FairQueue(64)
    flood = _requests("flooder", 40)
    for pending in flood[:32]:
        queue.offer(pending, "flooder")
    assert queue.pop() is flood[0]  # the flooder's lane is an old one from now on
    (poll,) = _requests("poller", 1)
    assert queue.offer(poll, "poller") == (True, None)
    assert poll.key == QUEUED
    assert queue.pop() is poll  # not behind the flooder's next request
    assert queue.pop() is flood[1]
    # The turn reached the poller's emptied lane and dropped it: its next request is new again.
    assert queue.pop() is flood[2]
    (again,) = _requests("poller", 1)
    queue.offer(again, "poller")
    assert queue.pop() is again


def test_an_identity_back_before_its_turn_waits_its_turn_so_full_lanes_are_not_starved() -> None:
    queue = FairQueue(64)
    for pending in _requests("flooder", 32):
        queue.offer(pending, "flooder")
    queue.pop()
    for poller in ("a", "b", "c"):
        for pending in _requests(poller, 1):
            queue.offer(pending, poller)
    assert _identities(queue, 3) == ["a", "b", "c"]  # new lanes, each served first once
    # Back before the turn reached their emptied lanes: in the turn, behind the flooder's lane.
    for poller in ("a", "b", "c"):
        for pending in _requests(poller, 1):
            queue.offer(pending, poller)
    assert _identities(queue, 4) == ["flooder", "a", "b", "c"]


def test_a_lane_served_first_then_waits_its_turn() -> None:
    queue = FairQueue(64)
    for pending in _requests("flooder", 4):
        queue.offer(pending, "flooder")
    queue.pop()
    burst = _requests("poller", 3)
    for pending in burst:
        queue.offer(pending, "poller")
    # One request ahead of the turn; then the poller's lane is in the turn like any other.
    assert _order(queue) == ["poller", "flooder", "poller", "flooder", "poller", "flooder"]


def test_a_lane_emptied_by_expiry_or_push_out_is_no_longer_waiting_to_be_served() -> None:
    queue = FairQueue(4)
    (early,) = _requests("poller", 1, deadline=1.0)
    queue.offer(early, "poller")
    flood = _requests("flooder", 2)
    for pending in flood:
        queue.offer(pending, "flooder")
    assert queue.expire(2.0) == [early]
    assert _order(queue) == ["flooder", "flooder"]
    # Push-out: the queue is full, and a newcomer under its share takes the place of the fullest lane's
    # newest request. A lane emptied that way is out of the turn too.
    queue = FairQueue(2)
    (lone,) = _requests("a", 1)
    queue.offer(lone, "a")
    for pending in _requests("b", 1):
        queue.offer(pending, "b")
    (newcomer,) = _requests("c", 1)
    accepted, pushed_out = queue.offer(newcomer, "c")
    assert accepted and pushed_out is lone  # the lanes held one each: the first fullest gives way
    assert _order(queue) == ["b", "c"]
    assert queue.drain() == [] and queue.pop() is None
