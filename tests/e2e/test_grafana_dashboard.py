"""docs/grafana-ztgate.json queries only metrics a gateway exports: every PromQL expression of the
dashboard (panels and template variables) is parsed, its functions must be PromQL's, and each metric it
names must be in a real gateway's /metrics (started with a device and traffic, as an operator would
scrape it) or, for the metrics that only exist with a center, in what the center link registers."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from gateway.admin import watch_center
from gateway.metrics import Metrics
from gateway.sinks.syslog import SyslogSettings, SyslogSink
from tests.e2e.harness import Lab, policy_text
from tests.e2e.test_admin import RULES

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-ztgate.json"

# PromQL's functions and aggregation operators (prometheus.io/docs/prometheus/latest/querying/), and the
# keywords that may stand where a metric name could.
_FUNCTION_NAMES = """
abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min count
count_over_time count_values day_of_month day_of_week day_of_year days_in_month delta deriv exp floor group
histogram_quantile holt_winters hour idelta increase irate label_join label_replace last_over_time limitk ln
log10 log2 max max_over_time min min_over_time minute month predict_linear present_over_time quantile
quantile_over_time rate resets round scalar sgn sort sort_desc sqrt stddev stddev_over_time stdvar
stdvar_over_time sum sum_over_time time timestamp topk vector year label_values
"""
FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
KEYWORDS = frozenset(("and", "or", "unless", "bool", "offset"))
# Clauses whose parenthesised list holds label names, not metrics.
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names of one PromQL expression; ValueError for a function PromQL does not have."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations ($__rate_interval)
    text = _LABEL_LISTS.sub("", text)
    text = re.sub(r"\boffset\s+-?\w+", "", text)  # offset 5m
    if text.count("(") != text.count(")"):
        raise ValueError(f"unbalanced parentheses: {expr}")
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            if word not in FUNCTIONS:
                raise ValueError(f"not a PromQL function: {word}( in {expr}")
        elif word not in KEYWORDS and not re.fullmatch(r"\d+|e\d+|Inf|NaN", word):
            names.add(word)
    if "label_values(" in expr:  # Grafana's: label_values(metric, label)
        names -= {expr.rsplit(",", maxsplit=1)[-1].strip(" )")}
    return names


def exposed(text: str) -> set[str]:
    """The series names a /metrics text can have: each family's, with a histogram's _bucket/_sum/_count."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def center_metrics() -> set[str]:
    """What the center link (gateway/admin.py watch_center) registers, rendered as /metrics would."""
    metrics = Metrics()
    before = exposed(metrics.render().decode())
    link = SimpleNamespace(
        connected=True, max_staleness_s=3600.0, stale=False, revision=1, received=1, refused=0,
        staleness=lambda: {"stale_s": 1.0},
    )  # fmt: skip
    watch_center(SimpleNamespace(status={}, metrics=metrics), link)  # type: ignore[arg-type]
    return exposed(metrics.render().decode()) - before


def test_the_parser_finds_metrics_and_refuses_what_promql_does_not_have() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, asset) (rate(a_bucket{x="b(c)",y=~"$v"}[$__rate_interval])))'
    assert metric_names(expr) == {"a_bucket"}
    assert metric_names("sum(x_total) / on (job) group_left (asset) y and z offset 5m") == {
        "x_total",
        "y",
        "z",
    }
    assert metric_names("label_values(ztgate_requests_total, asset)") == {"ztgate_requests_total"}
    with pytest.raises(ValueError, match="not a PromQL function: rte"):
        metric_names("sum(rte(x[5m]))")
    assert "ztgate_reqests_total" not in exposed("# TYPE ztgate_requests_total counter\n")


async def test_every_metric_the_dashboard_queries_is_exported(lab: Lab, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    assert all(p.get("targets") for p in dashboard["panels"] if p["type"] != "row")
    queried = {name for expr in expressions(dashboard) for name in metric_names(expr)}

    port = await lab.start_device()
    # A syslog sink whose collector is away (a bound socket that does not listen refuses): it spools.
    with socket.socket() as away:
        away.bind(("127.0.0.1", 0))
        settings = SyslogSettings(
            "tcp", away.getsockname(), "gw-test", spool_dir=tmp_path / "spool", connect_timeout_s=1
        )
        gateway = await lab.start_gateway(
            policy_text(port, RULES), audit_sinks=[SyslogSink("siem", settings, flush_interval_s=0.01)]
        )
        client = await lab.client("alice")
        assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
        assert (await client.write_register(1, 1, device_id=1)).isError()
        gateway.audit.flush()
        url = f"http://127.0.0.1:{gateway.admin_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
            text = await response.text()
    live = exposed(text)
    # The audit views have series, not only a TYPE line: the spool holds the records, the refusal counts.
    spooled = re.search(r'^ztgate_audit_spool_bytes\{sink="siem"\} (\S+)$', text, re.MULTILINE)
    assert spooled is not None and float(spooled.group(1)) > 0
    refused = 'ztgate_refusals_by_rule_total{decision="deny",rule="(default deny)"} 1.0'
    assert refused in text.splitlines(), [line for line in text.splitlines() if "refusals" in line]
    center = center_metrics()
    assert center and center.isdisjoint(live)  # a gateway without a center exports none of them
    missing = sorted(queried - live - center)
    assert not missing, f"docs/grafana-ztgate.json queries metrics no gateway exports: {missing}"
    # The views the issue asks for are there (a panel removed by mistake fails here).
    for name in (
        "ztgate_requests_total",
        "ztgate_request_latency_seconds_bucket",
        "ztgate_upstream_connections",
        "ztgate_audit_queued",
        "ztgate_audit_spool_bytes",
        "ztgate_audit_sink_dropped_total",
        "ztgate_refusals_by_rule_total",
        "ztgate_certificate_expiry_seconds",
        "ztgate_policy_staleness_seconds",
        "ztgate_center_connected",
    ):
        assert name in queried, name
