"""Sink settings as the configuration gives them, and the sink each one makes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.sinks.base import Sink
from gateway.sinks.file import FileSink, StdoutSink
from gateway.sinks.syslog import SyslogSettings, SyslogSink

__all__ = ["SINK_TYPES", "SinkSettings", "build_sink"]

SINK_TYPES = ("file", "stdout", "syslog")


@dataclass(frozen=True)
class SinkSettings:
    """One ``[[audit.sinks]]`` entry."""

    type: str  # "file" | "stdout" | "syslog"
    name: str
    path: Path | None = None  # file
    rotate_mib: float = 0.0  # file: 0 leaves rotation to logrotate
    keep: int = 5  # file: rotated files kept
    syslog: SyslogSettings | None = None
    queue_limit: int = 100_000
    format: str | None = None  # gateway/audit_formats.FORMATS; None: the sink type's default


def build_sink(settings: SinkSettings, *, flush_interval_s: float = 0.05) -> Sink:
    if settings.type == "file":
        assert settings.path is not None
        return FileSink(
            settings.name,
            settings.path,
            rotate_mib=settings.rotate_mib,
            keep=settings.keep,
            queue_limit=settings.queue_limit,
            flush_interval_s=flush_interval_s,
            format=settings.format,
        )
    if settings.type == "stdout":
        return StdoutSink(
            settings.name,
            queue_limit=settings.queue_limit,
            flush_interval_s=flush_interval_s,
            format=settings.format,
        )
    if settings.type == "syslog":
        assert settings.syslog is not None
        return SyslogSink(
            settings.name,
            settings.syslog,
            queue_limit=settings.queue_limit,
            flush_interval_s=flush_interval_s,
            format=settings.format,
        )
    raise ValueError(f"unknown sink type {settings.type!r}")
