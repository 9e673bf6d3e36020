"""The relayed requests' deadlines on one timer (gateway.opcua.upstream._Deadlines): each request times
out at its own deadline, the earliest first, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gateway.opcua.asyncua_adapter import Reply
from gateway.opcua.upstream import _Deadlines

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


class Outcomes:
    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.order: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def reply(self, name: str) -> Reply:
        def answered(body: bytes | None, error: BaseException | None) -> None:
            self.order.append((name, "timeout" if isinstance(error, TimeoutError) else f"answer {body!r}"))
            self.changed.set()

        self.replies[name] = waiter = Reply(answered, lambda: self.order.append((name, "late")))
        return waiter

    def waiting(self) -> list[Reply]:
        return [w for w in self.replies.values() if not w.done()]

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.order) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_each_request_times_out_at_its_own_deadline_earliest_first(loop_name: str) -> None:
    async def scenario() -> list[tuple[str, str]]:
        seen = Outcomes()
        deadlines = _Deadlines(asyncio.get_running_loop(), seen.waiting)
        deadlines.add(seen.reply("long"), 30.0)
        # A shorter timeout added later (as after a reload) still fires first, and alone.
        deadlines.add(seen.reply("short"), 0.05)
        deadlines.add(seen.reply("answered"), 0.05)
        seen.replies["answered"].set_result(b"ok")
        deadlines.add(seen.reply("second"), 0.1)
        await seen.until(3)
        assert not seen.replies["long"].done()  # not due: the timer sleeps again until its deadline
        deadlines.cancel()
        seen.replies["short"].set_result(b"too late")
        return seen.order

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        order = runner.run(scenario())
    assert order == [
        ("answered", "answer b'ok'"),
        ("short", "timeout"),
        ("second", "timeout"),
        ("short", "late"),
    ]
