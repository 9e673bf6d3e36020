"""The upstream pools' fair queue (gateway/upstream.py ``FairQueue``): the order in which identities'
requests leave it for the device, what a lane that was empty gets, and what happens to a request past
its identity's share: held, its session stopped, and taken in when its identity's requests leave
(issue 16, point 2)."""

from __future__ import annotations

from typing import cast

from gateway.upstream import HELD, NOT_IN_FLIGHT, QUEUED, Client, FairQueue, Pending


class _Session:
    def __init__(self, identity: str) -> None:
        self.identity = identity  # all the queue reads of a session


def _requests(
    identity: str, count: int, deadline: float = 100.0, session: Client | None = None
) -> list[Pending]:
    session = session or cast(Client, _Session(identity))
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


def test_a_lane_emptied_by_expiry_is_no_longer_waiting_to_be_served() -> None:
    queue = FairQueue(4)
    (early,) = _requests("poller", 1, deadline=1.0)
    queue.offer(early, "poller")
    flood = _requests("flooder", 2)
    for pending in flood:
        queue.offer(pending, "flooder")
    assert queue.expire(2.0) == [early]
    assert _order(queue) == ["flooder", "flooder"]
    assert queue.drain() == [] and queue.pop() is None


def test_past_its_share_a_request_is_held_not_refused_and_taken_in_when_its_identity_is_served() -> None:
    queue = FairQueue(4, timeout_s=0.4)
    session = cast(Client, _Session("flooder"))
    flood = _requests("flooder", 6, session=session)
    assert [queue.offer(pending, "flooder")[0] for pending in flood] == [True] * 4 + [False] * 2
    assert [p.key for p in flood[4:]] == [HELD, HELD] and len(queue) == 4 and queue.held == 2
    # One of the flooder's requests leaves: its oldest held one is taken in, with a deadline from now.
    assert queue.pop(now=7.0) is flood[0]
    assert flood[4].key == QUEUED and flood[4].deadline == 7.4 and flood[5].key == HELD
    assert queue.released == []  # the session still has one held: it reads nothing yet
    assert queue.pop(now=8.0) is flood[1]
    assert queue.released == [session] and queue.held == 0
    assert [queue.pop() for _ in range(4)] == flood[2:]


def test_a_newcomer_to_a_full_queue_takes_the_place_of_the_fullest_lanes_newest_which_is_held() -> None:
    queue = FairQueue(4, timeout_s=0.4)
    flood = _requests("flooder", 5)
    for pending in flood:
        queue.offer(pending, "flooder")
    assert queue.pop(now=0.5) is flood[0]  # and flood[4] is taken in: the queue is full again
    assert queue.released == [flood[4].session]
    queue.released.clear()  # as the pool does once it has let the session read on
    (poll,) = _requests("poller", 1)
    accepted, pushed_out = queue.offer(poll, "poller")
    assert accepted and pushed_out is flood[4] and flood[4].key == HELD and queue.held == 1
    assert queue.pop(now=1.0) is poll  # the new lane first
    # The poller's lane is empty again: the flooder's share is the whole queue, and its held request is
    # taken in, with a deadline from now, and its session released.
    assert flood[4].key == QUEUED and flood[4].deadline == 1.4
    assert queue.released == [flood[4].session]
    assert [queue.pop() for _ in range(4)] == flood[1:]


def test_many_identities_in_a_small_queue_are_held_in_turn_and_all_get_through() -> None:
    # More identities than places: nobody can give way, so the newcomers wait, held, in arrival order.
    queue = FairQueue(2, timeout_s=1.0)
    first = _requests("a", 1) + _requests("b", 1)
    for pending in first:
        assert queue.offer(pending, pending.session.identity) == (True, None)
    later = _requests("c", 1) + _requests("d", 1)
    for pending in later:
        assert queue.offer(pending, pending.session.identity) == (False, None)
    assert _order(queue) == ["a", "b", "c", "d"]
    assert len(queue.released) == 2 and queue.held == 0


def test_expiry_and_drain_take_in_or_release_the_held() -> None:
    queue = FairQueue(2, timeout_s=5.0)
    early = _requests("flooder", 2, deadline=1.0)
    for pending in early:
        queue.offer(pending, "flooder")
    (held,) = _requests("flooder", 1)
    assert queue.offer(held, "flooder") == (False, None)
    assert queue.expire(2.0) == early
    assert held.key == QUEUED and held.deadline == 7.0 and queue.next_deadline() == 7.0
    (more,) = _requests("other", 1)
    queue.offer(more, "other")
    (last,) = _requests("other", 1)
    queue.offer(last, "other")  # the queue is full and no lane can give way: held
    assert last.key == HELD
    assert sorted(id(p) for p in queue.drain()) == sorted(id(p) for p in (held, more, last))
    assert len(queue.released) == 2 and queue.held == 0 and len(queue) == 0


def test_a_session_that_ends_has_its_queued_and_held_requests_taken_out_and_its_places_go_on() -> None:
    # Two sessions of one identity: the first holds the queue's four places and one held request, the
    # second one held behind it. The first ends: nothing of it may leave for the device, and the
    # second's request takes a place at once, its session released.
    queue = FairQueue(4, timeout_s=0.4)
    gone, other = cast(Client, _Session("flooder")), cast(Client, _Session("flooder"))
    mine = _requests("flooder", 5, session=gone)
    (theirs,) = _requests("flooder", 1, session=other)
    for pending in [*mine, theirs]:
        queue.offer(pending, "flooder")
    (poll,) = _requests("poller", 1)
    queue.offer(poll, "poller")  # takes the place of mine[3], held first in its lane
    assert queue.held == 3 and len(queue) == 4
    withdrawn = queue.withdraw(gone, now=3.0)
    assert sorted(id(p) for p in withdrawn) == sorted(id(p) for p in mine)
    assert all(p.key == NOT_IN_FLIGHT for p in mine)
    assert theirs.key == QUEUED and theirs.deadline == 3.4 and queue.released == [other]
    assert queue.held == 0 and len(queue) == 2 and queue.next_deadline() == poll.deadline
    assert queue.withdraw(gone, now=4.0) == []
    assert _order(queue) == ["poller", "flooder"] and queue.pop() is None


def test_a_session_that_ends_with_nothing_waiting_changes_nothing() -> None:
    queue = FairQueue(4, timeout_s=0.4)
    flood = _requests("flooder", 3)
    for pending in flood:
        queue.offer(pending, "flooder")
    assert queue.withdraw(cast(Client, _Session("flooder")), now=1.0) == []
    assert [queue.pop() for _ in range(3)] == flood
