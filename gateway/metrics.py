"""Metrics: plain counters on the data path, Prometheus text at scrape time.

The hot path only bumps integers in dicts and lists it already holds; prometheus_client renders the
exposition format from them when ``/metrics`` is scraped, through a custom collector. That keeps a
request's metrics cost at a dict update and a bisect, with no locks and no label look-ups.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Decision-to-reply latency buckets, in seconds: loopback PLCs answer in ~100 µs, serial lines in 100 ms.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class LatencyHistogram:
    """Cumulative-on-render histogram: ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total_s")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class UpstreamState:
    """What an upstream pool reports at scrape time."""

    asset: str
    protocol: str
    connected: int
    max_connections: int
    in_flight: int
    queued: int
    late_replies: int
    timeouts: int
    connect_failures: int
    not_answering: int = 0  # open connections on which the device let a request time out, silent since
    last_error: str | None = None  # why the last connection attempt failed or the last one was lost
    held: int = 0  # requests held past their identity's share of the queue, their sessions not reading


class ProcessMetrics:
    """What any ztgate process exposes: gauges and counters read at scrape time (certificates, center
    link, the agent's relays). The gateway's data path adds its own families (:class:`Metrics`)."""

    def __init__(self) -> None:
        self.gauges: dict[str, Callable[[], float]] = {}
        # name -> (help, label names, read: [(label values, value)]), read at scrape time
        self.labelled_gauges: dict[
            str, tuple[str, tuple[str, ...], Callable[[], Iterable[tuple[tuple[str, ...], float]]]]
        ] = {}
        self.counters: dict[str, Callable[[], float]] = {}
        # name -> ("counter" | "gauge", label names, read: [(label values, value)]), read at scrape time
        self.labeled: dict[
            str, tuple[str, tuple[str, ...], Callable[[], Iterable[tuple[tuple[str, ...], float]]]]
        ] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        for name, read in self.gauges.items():
            gauge = GaugeMetricFamily(name, name.replace("_", " "))
            gauge.add_metric((), read())
            yield gauge
        for name, (text, label_names, read_labelled) in self.labelled_gauges.items():
            gauge = GaugeMetricFamily(name, text, labels=label_names)
            for values, value in read_labelled():
                gauge.add_metric(values, value)
            yield gauge
        for name, read in self.counters.items():
            counter = CounterMetricFamily(name, name.replace("_", " "))
            counter.add_metric((), read())
            yield counter
        for name, (kind, label_names, read_labeled) in self.labeled.items():
            make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            labeled = make(name, name.replace("_", " "), labels=label_names)
            for values, value in read_labeled():
                labeled.add_metric(values, value)
            yield labeled


class Metrics(ProcessMetrics):
    """All counters of one gateway process: the data path's, and the process's."""

    def __init__(self) -> None:
        # (protocol, asset, operation, decision) -> count of requests of sessions that have ended;
        # live sessions count in their own dicts (no shared key to build per request) and are added in
        # at scrape time through ``live_requests``. Operation is e.g. the Modbus function code.
        self.requests: dict[tuple[str, str, int | str, str], int] = {}
        self.live_requests: Callable[[], Iterable[tuple[tuple[str, str, int | str, str], int]]] = list
        self.latency: dict[tuple[str, str], LatencyHistogram] = {}
        self.refused_sessions: dict[str, int] = {}
        self.protocol_errors: dict[tuple[str, str], int] = {}
        self.upstream_sources: list[Callable[[], list[UpstreamState]]] = []
        super().__init__()

    def add_requests(self, counts: Iterable[tuple[tuple[str, str, int | str, str], int]]) -> None:
        requests = self.requests
        for key, count in counts:
            requests[key] = requests.get(key, 0) + count

    def request_totals(self) -> dict[tuple[str, str, int | str, str], int]:
        totals = dict(self.requests)
        for key, count in self.live_requests():
            totals[key] = totals.get(key, 0) + count
        return totals

    def histogram(self, protocol: str, asset: str) -> LatencyHistogram:
        key = (protocol, asset)
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = LatencyHistogram()
        return histogram

    def count_refused_session(self, reason: str) -> None:
        self.refused_sessions[reason] = self.refused_sessions.get(reason, 0) + 1

    def count_protocol_error(self, protocol: str, side: str) -> None:
        key = (protocol, side)
        self.protocol_errors[key] = self.protocol_errors.get(key, 0) + 1

    def families(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "ztgate_requests",
            "Requests decided, by protocol, asset, operation and decision",
            labels=("protocol", "asset", "operation", "decision"),
        )
        for (protocol, asset, operation, decision), count in self.request_totals().items():
            requests.add_metric((protocol, asset, str(operation), decision), count)
        yield requests

        latency = HistogramMetricFamily(
            "ztgate_request_latency_seconds",
            "Time from decoding a forwarded request to answering the client",
            labels=("protocol", "asset"),
        )
        for labels, histogram in list(self.latency.items()):
            latency.add_metric(labels, histogram.buckets(), histogram.total_s)
        yield latency

        refused = CounterMetricFamily(
            "ztgate_sessions_refused", "Overlay sessions refused, by reason", labels=("reason",)
        )
        for reason, count in list(self.refused_sessions.items()):
            refused.add_metric((reason,), count)
        yield refused

        errors = CounterMetricFamily(
            "ztgate_protocol_errors",
            "Malformed messages, by protocol and side (client or upstream)",
            labels=("protocol", "side"),
        )
        for labels, count in list(self.protocol_errors.items()):
            errors.add_metric(labels, count)
        yield errors

        states = [state for source in self.upstream_sources for state in source()]
        labels = ("protocol", "asset")
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "connected": GaugeMetricFamily(
                "ztgate_upstream_connections", "Open connections to a device that answers", labels=labels
            ),
            "not_answering": GaugeMetricFamily(
                "ztgate_upstream_not_answering",
                "Open connections on which a request timed out and the device sent nothing since",
                labels=labels,
            ),
            "max_connections": GaugeMetricFamily(
                "ztgate_upstream_max_connections", "Connection cap towards the device", labels=labels
            ),
            "in_flight": GaugeMetricFamily(
                "ztgate_upstream_in_flight", "Requests sent and not yet answered", labels=labels
            ),
            "queued": GaugeMetricFamily(
                "ztgate_upstream_queued", "Requests waiting for an upstream slot", labels=labels
            ),
            "held": GaugeMetricFamily(
                "ztgate_upstream_held",
                "Requests held past their identity's share of the queue, their sessions not reading",
                labels=labels,
            ),
            "late_replies": CounterMetricFamily(
                "ztgate_upstream_late_replies", "Replies that matched no waiting request", labels=labels
            ),
            "timeouts": CounterMetricFamily(
                "ztgate_upstream_timeouts", "Requests the device did not answer in time", labels=labels
            ),
            "connect_failures": CounterMetricFamily(
                "ztgate_upstream_connect_failures", "Failed connection attempts", labels=labels
            ),
        }
        for state in states:
            for field, family in families.items():
                family.add_metric((state.protocol, state.asset), getattr(state, field))
        yield from families.values()
        yield from super().families()


class _Collector(Collector):
    def __init__(self, metrics: ProcessMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        return self._metrics.families()
