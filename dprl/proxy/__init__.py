"""The proxy itself: the server, one session per client, forward exchanges and tunnels,
access control and the refusal log."""
