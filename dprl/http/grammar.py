"""The grammar of HTTP/1.1 messages (RFC 9110, RFC 9112), each regex next to its ABNF.

Anything outside the grammar is an error, never a guess: bare CR or LF, obs-fold, NUL,
whitespace before the colon, quotes in codings are the classic request-smuggling holes.
"""

from __future__ import annotations

import re

# RFC 9110 5.6.2  token = 1*tchar
TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# RFC 9110 5.6.4  quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
# RFC 9112 5.1   field-line = field-name ":" OWS field-value OWS
# RFC 9110 5.5   field-value = *field-content ; field-vchar = VCHAR / obs-text
# The value ends in a field-vchar and the trailing [ \t]* takes the OWS after it (a lazy
# value would try the OWS after every byte: 6 times slower on a browser's User-Agent);
# control bytes (CR, LF, NUL...) never match.
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[ \t]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[ \t]*")
# RFC 9112 3     request-line = method SP request-target SP HTTP-version
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
# RFC 9112 4     status-line = HTTP-version SP status-code SP [ reason-phrase ]
# (the SP before an empty reason is often missing in the wild; accepted)
STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 9112 7.1   chunk = chunk-size [ chunk-ext ] CRLF ; chunk-size = 1*HEXDIG
#                chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# At most 16 digits (leading zeros included): a size that needs more is refused, not parsed.
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + QUOTED + rb"))?)*)"
)
# RFC 9110 8.6   Content-Length = 1*DIGIT (leading zeros allowed; 18 digits fit in an int64)
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# RFC 9112 6.1   transfer-coding = token *( OWS ";" OWS transfer-parameter )
#                transfer-parameter = token BWS "=" BWS ( token / quoted-string )
_TOKEN_S, _QUOTED_S = TOKEN.decode(), QUOTED.decode("latin-1")
CODING = re.compile(rf"({_TOKEN_S})((?:[ \t]*;[ \t]*{_TOKEN_S}[ \t]*=[ \t]*(?:{_TOKEN_S}|{_QUOTED_S}))*)")
# RFC 9110 7.2 / RFC 3986 3.2.2   Host = uri-host [ ":" port ]
#   uri-host = IP-literal / IPv4address / reg-name ; reg-name = *( unreserved / pct-encoded / sub-delims )
# (runs of plain characters matched at once: the two branches cannot both match a byte)
HOST_FIELD = re.compile(r"(?:\[[0-9A-Za-z:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]+|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?")
# RFC 3986 3.1   scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3986 3.2.2 reg-name as dprl accepts it for destinations: RFC 1123 labels, plus "_"
# which real DNS names carry (service records, some CDNs); percent-encoding is refused.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
REG_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# RFC 3986 3.2.3  port = *DIGIT; leading zeros name the same port (":00080" is 80)
PORT = re.compile(r"[0-9]{1,16}")
