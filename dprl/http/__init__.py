"""HTTP/1.x for a forward proxy, sans I/O: bytes in, typed heads and framing out.

- ``grammar``: the RFC 9110/9112 ABNF as regexes
- ``head``: where a head ends (with its limits), request and response heads, Host rules
- ``framing``: where a body ends, chunk lines, trailers, the framing fields of a hop
- ``target``: absolute-form and authority-form targets, host and port grammar
- ``rewrite``: heads for the next hop (hop-by-hop, Via, Host, Expect), error answers
Every parsing error is a ``ProtocolError(status, message)``.
"""

from .errors import ProtocolError
from .framing import NO_BODY, BodyFraming, Framing, request_framing, response_framing
from .head import RequestHead, ResponseHead, check_host_field, parse_request_head, parse_response_head
from .target import Target, connect_target, forward_target, parse_host, parse_port, split_authority

__all__ = [
    "NO_BODY",
    "BodyFraming",
    "Framing",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "Target",
    "check_host_field",
    "connect_target",
    "forward_target",
    "parse_host",
    "parse_port",
    "parse_request_head",
    "parse_response_head",
    "request_framing",
    "response_framing",
    "split_authority",
]
