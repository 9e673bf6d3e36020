"""The one exception the CIP codec raises, and what the session should answer with."""

from __future__ import annotations

from protocols.errors import ProtocolError


class CipProtocolError(ProtocolError):
    """An EtherNet/IP or CIP peer broke the protocol. What to do depends on which status is set:

    - ``close=True``: the encapsulation byte stream cannot be trusted (a length above the cap, a header
      that cannot be framed). Close the TCP connection; ``encapsulation_status`` may still name the reason.
    - ``encapsulation_status`` (with ``close=False``): the frame was delimited and consumed but its
      encapsulation layer is wrong (unknown command, bad CPF, wrong protocol version). Answer with an
      encapsulation reply of the same ``command``, ``session_handle`` and ``sender_context`` carrying it.
    - ``general_status``: the CIP message router request is wrong (bad path, short data, a cap). Answer
      with a message router reply to ``service`` carrying it and ``extended_status``, wrapped like the
      request was.
    - none of them (``close=False``): the frame must be discarded without a reply (Vol 2 §2-3.1: a
      nonzero options field).
    """

    def __init__(
        self,
        message: str,
        *,
        close: bool = False,
        general_status: int | None = None,
        extended_status: tuple[int, ...] = (),
        encapsulation_status: int | None = None,
        service: int | None = None,
        command: int | None = None,
        session_handle: int = 0,
        sender_context: bytes = bytes(8),
    ) -> None:
        super().__init__(message, close=close)
        self.general_status = general_status
        self.extended_status = extended_status
        self.encapsulation_status = encapsulation_status
        self.service = service
        self.command = command
        self.session_handle = session_handle
        self.sender_context = sender_context

    @property
    def discard(self) -> bool:
        """The frame is dropped without any answer (and the connection stays open)."""
        return not self.close and self.general_status is None and self.encapsulation_status is None


def cip_error(
    general_status: int, message: str, *, extended_status: tuple[int, ...] = (), service: int | None = None
) -> CipProtocolError:
    """A well-framed CIP request that must be answered with ``general_status``."""
    return CipProtocolError(
        message, general_status=general_status, extended_status=extended_status, service=service
    )


__all__ = ["CipProtocolError", "cip_error"]
