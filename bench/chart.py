"""The PNG chart of a run: throughput, proxy CPU per request and latency per path (matplotlib, from the
``bench`` extra; without it the run still writes its JSON and tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_chart", "write_protocol_chart"]

COLORS = {
    "direct": "#9e9e9e",
    "haproxy": "#4c78a8",
    "stunnel": "#f58518",
    "ztgate": "#54a24b",
    "ztgate-mtls": "#2f6f2a",
    "modbus-proxy": "#b279a2",
}
PROTO_PATH_LABELS = (
    ("direct", "direct"),
    ("ztgate", "agent -> ztgate"),
    ("ztgate-mtls", "client with its own identity -> ztgate"),
)


def write_chart(results: dict[str, Any], path: Path) -> str | None:
    """Write the chart; returns None, or why it could not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"

    summary = results["summary"]
    paths = [p for p in results["paths"] if p in summary]
    labels = {p: results["paths"][p]["short"] for p in paths}

    def stat(path: str, workload: str, metric: str) -> tuple[float, float, float] | None:
        value = summary.get(path, {}).get(workload, {}).get(metric)
        if value is None:
            return None
        return value["median"], value["median"] - value["min"], value["max"] - value["median"]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels: list[tuple[Any, str, list[tuple[str, str, str]], bool]] = [
        (
            axes[0][0],
            "throughput, req/s (higher is better)",
            [("8x4", "req_per_s", "8x4"), ("mix", "req_per_s", "mix")],
            True,
        ),
        (
            axes[0][1],
            "proxy CPU µs per request (lower is better)",
            [("8x4", "proxy_cpu_us_per_req", "8x4"), ("mix", "proxy_cpu_us_per_req", "mix")],
            False,
        ),
        (
            axes[1][0],
            "latency µs at 1 x 1 (lower is better)",
            [("1x1", "p50_us", "p50"), ("1x1", "p99_us", "p99")],
            False,
        ),
        (
            axes[1][1],
            "latency µs at 8 x 4 (lower is better)",
            [("8x4", "p50_us", "p50"), ("8x4", "p99_us", "p99")],
            False,
        ),
    ]
    for ax, title, series, _ in panels:
        width = 0.8 / len(series)
        for index, (workload, metric, series_label) in enumerate(series):
            xs, heights, errs_low, errs_high, colors = [], [], [], [], []
            for position, name in enumerate(paths):
                value = stat(name, workload, metric)
                if value is None:
                    continue
                xs.append(position + (index - (len(series) - 1) / 2) * width)
                heights.append(value[0])
                errs_low.append(value[1])
                errs_high.append(value[2])
                colors.append(COLORS.get(name, "#a1d99b" if name.startswith("ztgate@") else "#333333"))
            bars = ax.bar(
                xs,
                heights,
                width * 0.95,
                yerr=[errs_low, errs_high],
                capsize=3,
                color=colors,
                alpha=1.0 if index == 0 else 0.55,
                edgecolor="black",
                linewidth=0.4,
                label=series_label,
            )
            ax.bar_label(bars, labels=[_short(h) for h in heights], fontsize=7, padding=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(paths)))
        ax.set_xticklabels([labels[p] for p in paths], fontsize=8)
        ax.margins(y=0.15)
        if len(series) > 1:
            handles = [
                Patch(facecolor="#666666", alpha=1.0 if i == 0 else 0.55, edgecolor="black", label=s[2])
                for i, s in enumerate(series)
            ]
            ax.legend(handles=handles, fontsize=8)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.grid(axis="y", alpha=0.3)
    meta = results["meta"]
    fig.suptitle(
        f"ztgate benchmark, Modbus TCP FC 3 reads of 10 registers - {meta['date']} - "
        f"medians of {meta['settings']['repeat']} interleaved repetitions, bars = min-max",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def write_protocol_chart(results: dict[str, Any], path: Path) -> str | None:
    """The EtherNet/IP and OPC UA rows: req/s direct against through ztgate, and the CPU per request of
    the gateway and the agent (stacked), with issue 5's OPC UA targets drawn in; None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    from bench.report import OPCUA_CPU_TARGET_US, OPCUA_RATIO_TARGET

    protocols: dict[str, Any] = results.get("protocols") or {}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.0))
    rows = (("enip", "EtherNet/IP", "request"), ("opcua", "OPC UA", "Read"))
    for row, (key, name, unit) in enumerate(rows):
        part = protocols.get(key) or {}
        summary = part.get("summary") or {}
        workloads = [w for w in part.get("workloads", {}) if any(w in per for per in summary.values())]
        rate_ax, cpu_ax = axes[row][0], axes[row][1]
        rate_ax.set_title(f"{name}: {unit}s/s, direct vs through ztgate (higher is better)", fontsize=10)
        cpu_ax.set_title(f"{name}: CPU µs per {unit} through ztgate (lower is better)", fontsize=10)
        if not workloads:
            for ax in (rate_ax, cpu_ax):
                ax.text(
                    0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes
                )
                ax.set_xticks([])
                ax.set_yticks([])
            continue

        def stat(
            path: str, workload: str, metric: str, s: dict[str, Any] = summary
        ) -> tuple[float, ...] | None:
            value = s.get(path, {}).get(workload, {}).get(metric)
            if value is None:
                return None
            return value["median"], value["median"] - value["min"], value["max"] - value["median"]

        xs = range(len(workloads))
        shown = [(p, label) for p, label in PROTO_PATH_LABELS if p in summary]
        width = 0.8 / max(len(shown), 1)
        for index, (p, label) in enumerate(shown):
            offset = (index - (len(shown) - 1) / 2) * width
            points = [(x + offset, stat(p, w, "req_per_s")) for x, w in zip(xs, workloads, strict=True)]
            present = [(x, v) for x, v in points if v is not None]
            if not present:
                continue
            bars = rate_ax.bar(
                [x for x, _ in present],
                [v[0] for _, v in present],
                width * 0.95,
                yerr=[[v[1] for _, v in present], [v[2] for _, v in present]],
                capsize=3,
                color=COLORS[p],
                edgecolor="black",
                linewidth=0.4,
                label=label,
            )
            rate_ax.bar_label(bars, labels=[_short(v[0]) for _, v in present], fontsize=7, padding=2)
        if key == "opcua":
            for x, w in zip(xs, workloads, strict=True):
                direct = stat("direct", w, "req_per_s")
                if direct is not None:
                    level = OPCUA_RATIO_TARGET * direct[0]
                    rate_ax.hlines(
                        level, x - 0.45, x + 0.45, colors="#d62728", linestyles="--", linewidth=1.2
                    )
                    rate_ax.annotate(  # over the direct bar, which is always the taller
                        f"target {OPCUA_RATIO_TARGET:g} x direct",
                        (x - 0.43, level),
                        fontsize=7,
                        color="#d62728",
                        ha="left",
                        va="bottom",
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
                    )
        rate_ax.legend(fontsize=8)

        cpu_paths = [p for p in ("ztgate", "ztgate-mtls") if p in summary]
        cpu_width = 0.8 / max(len(cpu_paths), 1)
        for index, p in enumerate(cpu_paths):
            at = [x + (index - (len(cpu_paths) - 1) / 2) * cpu_width for x in xs]
            gateway = [stat(p, w, "gateway_cpu_us_per_req") for w in workloads]
            agent = [stat(p, w, "agent_cpu_us_per_req") if p == "ztgate" else None for w in workloads]
            g_heights = [g[0] if g else 0.0 for g in gateway]
            a_heights = [a[0] if a else 0.0 for a in agent]
            cpu_ax.bar(
                at,
                g_heights,
                cpu_width * 0.95,
                yerr=[[g[1] if g else 0.0 for g in gateway], [g[2] if g else 0.0 for g in gateway]],
                capsize=3,
                color=COLORS[p],
                edgecolor="black",
                linewidth=0.4,
                label="gateway" if p == "ztgate" else "gateway (client speaks mTLS)",
            )
            top = cpu_ax.bar(
                at,
                a_heights,
                cpu_width * 0.95,
                bottom=g_heights,
                color="#a1d99b",
                edgecolor="black",
                linewidth=0.4,
                label="agent" if p == "ztgate" else None,
            )
            cpu_ax.bar_label(
                top,
                labels=[
                    ("-" if not g else f"{_short(g)} + {_short(a)}" if a else _short(g))
                    for g, a in zip(g_heights, a_heights, strict=True)
                ],
                fontsize=7,
                padding=2,
            )
        if key == "opcua":
            cpu_ax.axhline(OPCUA_CPU_TARGET_US, color="#d62728", linestyle="--", linewidth=1.2)
            cpu_ax.annotate(
                f"target: gateway <= {OPCUA_CPU_TARGET_US:.0f} µs",
                (0.99, OPCUA_CPU_TARGET_US),
                xycoords=cpu_ax.get_yaxis_transform(),
                fontsize=7,
                color="#d62728",
                ha="right",
                va="bottom",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
            )
        cpu_ax.legend(fontsize=8)
        for ax in (rate_ax, cpu_ax):
            ax.set_xticks(list(xs))
            ax.set_xticklabels(workloads, fontsize=8)
            ax.margins(y=0.15)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.grid(axis="y", alpha=0.3)
    meta = results["meta"]
    fig.suptitle(
        "ztgate benchmark, EtherNet/IP (pycomm3) and OPC UA (asyncua) against the simulators - "
        f"{meta['date']} - medians of {meta['settings']['repeat']} interleaved repetitions, bars = min-max",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
