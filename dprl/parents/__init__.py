"""Parent proxies: destinations reached through pools of upstream proxies.

- ``spec``: pools and routes as configured.
- ``pool``: each parent's live state, and the order a pool offers them in.
- ``health``: ejection after consecutive failures, probes with back-off.
- ``handshake``: HTTP CONNECT and SOCKS5 to a parent.
- ``tls``: TLS to an ``https://`` parent, and the bridge a tunnel goes through.
- ``connect``: a connection through a pool, failing over on the same destination slot.
"""
