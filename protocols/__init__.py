"""Sans-IO protocol codecs: bytes in, typed requests and responses out, and back.

Nothing in this package touches sockets, event loops, clocks or logging. The only exception a codec
raises is a subclass of :class:`protocols.errors.ProtocolError`, which carries the protocol's own
error code and what the session should do about it.
"""
