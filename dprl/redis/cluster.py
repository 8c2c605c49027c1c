"""Redis Cluster routing: which hash slot a key is in, and which primary serves it.

A key's slot is CRC16 (XMODEM) of its hash tag (the part between the first ``{`` and the
next ``}``) modulo 16384. dprl's keys for a host share the tag ``{host key}``, so every
script for a host runs on one node; the epoch marker of a slot uses a tag that hashes to
that same slot (``marker_tag``).
"""

from __future__ import annotations

SLOTS = 16384


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str) -> int:
    """The hash slot of a Redis key (its hash tag's, if it has a non-empty one)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


def tag_slot(tag: str) -> int:
    """The slot of keys whose hash tag is ``tag``."""
    return crc16(tag.encode()) % SLOTS


_marker_tags: list[str] = []


def marker_tag(slot: int) -> str:
    """A short hash tag that lands in ``slot`` (the table is built once, on first use: ~0.3 s)."""
    if not _marker_tags:
        found: dict[int, str] = {}
        number = 0
        while len(found) < SLOTS:
            tag = f"e{number}"
            found.setdefault(tag_slot(tag), tag)
            number += 1
        _marker_tags.extend(found[s] for s in range(SLOTS))
    return _marker_tags[slot]
