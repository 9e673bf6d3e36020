"""Where audit records go: a file, stdout, a syslog collector (TCP, TLS or UDP), one or more per process.

:class:`gateway.audit.AuditLog` builds and serialises the records; each sink here takes them in batches
(:meth:`Sink.offer`, never blocking), keeps them in a bounded queue of its own and writes them from a
thread of its own, so a slow or dead collector never slows the data path or another sink. A syslog sink
over TCP or TLS spools to disk first (:mod:`gateway.sinks.spool`) and sends from there.
"""

from gateway.sinks.base import KINDS, Record, Sink, record_kind
from gateway.sinks.build import SinkSettings, build_sink

__all__ = ["KINDS", "Record", "Sink", "SinkSettings", "build_sink", "record_kind"]
