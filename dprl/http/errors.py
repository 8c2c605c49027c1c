"""The one error HTTP parsing raises."""

from __future__ import annotations


class ProtocolError(Exception):
    """A message broke HTTP/1.x; ``status`` is what a server answers the client that sent it.

    Parsing does not know which side sent the bytes. Raised while reading a client's
    request it is the answer (400, 414, 431, 501, 505); the relay turns one raised while
    reading an upstream's response into a 502, at the one place it reads responses.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
