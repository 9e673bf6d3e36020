"""A fuzz campaign from outside: mutated requests through a mutual-TLS session to a real gateway process
in front of a real simulator process, while a second, well-behaved session is checked periodically.

Each input is sent followed by the target's probe; the probe's answer shows the gateway dealt with the
input and still serves the session. A closed connection is a legitimate answer to a malformed input
(the codec refused it: the session is then reopened); no answer at all within ``hang_s`` is a finding.
At the end the gateway's log must hold no traceback, the audit trail must hold protocol errors, every
health check must have been answered, and the gateway's memory must not have grown past a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from gateway.tls import client_context
from tests.e2e.harness import Pki, make_pki
from tests.fuzz.mutate import Mutator
from tests.fuzz.targets import Stream, Target
from tests.processes import GatewayProcess, SimProcess

RAW_SHARE = 0.15  # inputs sent with their framing mutated too (most are refused at the framing)
LOG_FINDINGS = ("Traceback", "Exception in callback", "Task exception was never retrieved", " ERROR ")


@dataclass
class Report:
    protocol: str
    seed: int
    inputs: int = 0
    answered: int = 0  # the probe after the input was answered on the same session
    closed: int = 0  # the gateway ended the session (a refused frame)
    hangs: int = 0  # neither within hang_s: a finding
    sessions: int = 0
    health_checks: int = 0
    health_failures: int = 0
    rss_start_bytes: int = 0
    rss_max_bytes: int = 0
    rss_end_bytes: int = 0
    rss_timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (s, inputs, bytes) every 10 s
    audit_events: dict[str, int] = field(default_factory=dict)
    log_findings: list[str] = field(default_factory=list)
    log_excerpt: list[str] = field(default_factory=list)  # from the first finding on
    audit_error_samples: list[str] = field(default_factory=list)
    hang_samples: list[str] = field(default_factory=list)
    health_samples: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def problems(self, rss_growth_limit_bytes: int) -> list[str]:
        found = []
        if self.hangs:
            found.append(f"{self.hangs} inputs left the session hanging, e.g. {self.hang_samples[:3]}")
        if self.health_failures or not self.health_checks:
            found.append(
                f"well-behaved session: {self.health_failures} of {self.health_checks} checks failed"
            )
        if self.log_findings:
            found.append(f"gateway log: {self.log_findings[:5]}")
        if self.audit_events.get("audit_error"):
            found.append(f"{self.audit_events['audit_error']} audit events could not be written")
        if not self.audit_events.get("protocol_error"):
            found.append("the audit trail recorded no protocol error")
        if self.rss_max_bytes - self.rss_start_bytes > rss_growth_limit_bytes:
            found.append(f"memory grew from {self.rss_start_bytes} to {self.rss_max_bytes} bytes")
        return found


class Campaign:
    def __init__(
        self,
        target: Target,
        pki: Pki,
        directory: Path,
        *,
        seed: int,
        hang_s: float = 5.0,
        memory_limit_mib: int = 2048,
    ) -> None:
        self.memory_limit_mib = memory_limit_mib
        self.target = target
        self.pki = pki
        self.dir = directory
        self.rng = random.Random(seed)
        self.report = Report(target.name, seed)
        self.hang_s = hang_s
        files = pki.clients["alice"]
        self.context = client_context(files.cert, files.key, pki.ca, alpn=target.name)
        self.gateway: GatewayProcess | None = None
        self._started = time.monotonic()

    async def connect(self) -> Stream:
        assert self.gateway is not None
        async with asyncio.timeout(self.hang_s):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.gateway.port, ssl=self.context, server_hostname=self.target.asset
            )
            stream = Stream(reader, writer)
            await self.target.setup(stream)
        return stream

    async def reconnect(self) -> Stream:
        """A new session; a gateway that cannot give one within hang_s counts as a hang, and is retried."""
        while True:
            try:
                return await self.connect()
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                self.report.hangs += 1
                self.report.hang_samples.append(f"reconnect: {exc!r}")

    async def exchange(self, stream: Stream, data: bytes) -> str:
        """'answered', 'closed' or 'hung'."""
        probe, marker = self.target.probe(stream)
        stream.writer.write(data + probe)
        try:
            async with asyncio.timeout(self.hang_s):
                while not self.target.answers(await stream.frame(self.target), marker):
                    pass
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return "closed"
        except TimeoutError:
            return "hung"
        return "answered"

    async def run(self, count: int, *, check_every_s: float = 1.0, progress_every: int = 0) -> Report:
        target, report = self.target, self.report
        sim = SimProcess(target.name, *target.sim_args)
        await sim.start()
        # The campaign reconnects after every refused frame, far faster than any client should.
        overlay = {"source_rate_per_s": 1_000_000.0, "source_burst": 1_000_000}
        # An address-space limit: an input that makes the gateway allocate without bound fails there
        # (MemoryError, in the log) instead of taking a shared machine's memory.
        limit = ["prlimit", f"--as={self.memory_limit_mib << 20}"]
        self.gateway = GatewayProcess(
            self.pki, self.dir, target.policy(sim.port), overlay=overlay, prefix=limit
        )
        started = self._started = time.monotonic()
        try:
            await self.gateway.start()
            report.rss_start_bytes = report.rss_max_bytes = self.gateway.rss_bytes()
            health = asyncio.ensure_future(self._health(check_every_s))
            try:
                await self._fuzz(count, progress_every)
            finally:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
            report.rss_end_bytes = self.gateway.rss_bytes() if self.gateway.process.returncode is None else 0
        finally:
            await self.gateway.stop()
            await sim.stop()
        report.duration_s = round(time.monotonic() - started, 1)
        lines = self.gateway.log_text().splitlines()
        report.log_findings = [line for line in lines if any(f in line for f in LOG_FINDINGS)]
        first = next((n for n, line in enumerate(lines) if any(f in line for f in LOG_FINDINGS)), None)
        report.log_excerpt = lines[first : first + 60] if first is not None else []
        report.audit_events = _count_events(self.gateway.audit_path, report.audit_error_samples)
        return report

    async def _fuzz(self, count: int, progress_every: int) -> None:
        target, report, rng = self.target, self.report, self.rng
        corpus = target.corpus()
        mutator = Mutator(rng, corpus, target.length_fields)
        stream = await self.connect()
        report.sessions += 1
        for n in range(count):
            if progress_every and n % progress_every == 0:
                elapsed_s = round(time.monotonic() - self._started)
                progress = {"progress": n, "s": elapsed_s, "hangs": report.hangs}
                print(orjson.dumps(progress).decode(), file=sys.stderr, flush=True)
            payload = mutator.mutate(rng.choice(corpus))
            if rng.random() < RAW_SHARE:
                data = mutator.mutate(target.wrap(stream, rng.choice(corpus)))
            else:
                data = target.wrap(stream, payload)
            outcome = await self.exchange(stream, target.pad(data))
            report.inputs += 1
            if outcome == "answered":
                report.answered += 1
                continue
            if outcome == "hung":
                report.hangs += 1
                if len(report.hang_samples) < 20:
                    report.hang_samples.append(data[:4096].hex())
            else:
                report.closed += 1
            stream.writer.close()
            stream = await self.reconnect()
            report.sessions += 1
        stream.writer.close()

    async def _health(self, every_s: float) -> None:
        """The well-behaved session: one request every ``every_s``, answered within 2 s, on one session."""
        assert self.gateway is not None
        report, target = self.report, self.target
        stream = await self.connect()
        while True:
            await asyncio.sleep(every_s)
            rss = self.gateway.rss_bytes()
            report.rss_max_bytes = max(report.rss_max_bytes, rss)
            if report.health_checks % 10 == 0:
                report.rss_timeline.append((round(time.monotonic() - self._started, 1), report.inputs, rss))
            request, marker = target.health(stream)
            report.health_checks += 1
            try:
                stream.writer.write(request)
                async with asyncio.timeout(2.0):
                    while not target.health_answers(await stream.frame(target), marker):
                        pass
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
                report.health_failures += 1
                if len(report.health_samples) < 20:
                    report.health_samples.append(f"after {report.inputs} inputs: {exc!r}")
                stream.writer.close()
                stream = await self.reconnect()


def _count_events(path: Path, samples: list[str]) -> dict[str, int]:
    """Audit events by kind; the first few ``audit_error`` lines (an event the writer could not encode)
    go to ``samples``."""
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    with path.open("rb") as lines:
        for line in lines:
            event = orjson.loads(line).get("event", "?")
            counts[event] = counts.get(event, 0) + 1
            if event == "audit_error" and len(samples) < 5:
                samples.append(line.decode(errors="replace")[:1000])
    return counts


async def run_campaign(
    target: Target, count: int, *, seed: int, check_every_s: float = 1.0, progress_every: int = 0
) -> Report:
    with tempfile.TemporaryDirectory(prefix=f"ztgate-fuzz-{target.name}-") as scratch:
        directory = Path(scratch)
        pki = make_pki(directory / "pki")
        campaign = Campaign(target, pki, directory, seed=seed)
        return await campaign.run(count, check_every_s=check_every_s, progress_every=progress_every)
