"""Distributed mode: the Redis address, the wire protocol, the ordered channel, the Lua
scripts and their runner, and the limiter that shares caps across a fleet."""
