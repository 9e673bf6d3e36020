"""The one exception type a codec may raise."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer broke the protocol.

    ``close`` says whether the byte stream can still be trusted: when framing is lost the session must
    close the connection; when only the content of one well-framed message is wrong, the session may
    answer that message with the protocol's own error and carry on.
    """

    def __init__(self, message: str, *, close: bool) -> None:
        super().__init__(message)
        self.close = close
