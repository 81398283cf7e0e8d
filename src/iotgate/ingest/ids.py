"""64-bit message IDs, unique across restarts and across nodes sharing a database.

Layout (like Twitter's snowflake): 41 bits of milliseconds since 2024-01-01, 10 bits of node
ID, 12 bits of sequence. When a millisecond's 4,096 IDs are used up the generator borrows from
the next millisecond, so it never repeats and never waits; a restart takes far longer than the
IDs it could have borrowed.
"""

from __future__ import annotations

import time

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NODE_BITS = 10
SEQ_BITS = 12


class MessageIds:
    def __init__(self, node_id: int = 0) -> None:
        if not 0 <= node_id < (1 << NODE_BITS):
            raise ValueError("node_id must be 0..1023")
        self._node = node_id << SEQ_BITS
        self._last_ms = 0
        self._seq = 0

    def next(self) -> int:
        ms = int(time.time() * 1000) - EPOCH_MS
        if ms > self._last_ms:
            self._last_ms, self._seq = ms, 0
        else:
            self._seq += 1
            if self._seq >> SEQ_BITS:
                self._last_ms += 1
                self._seq = 0
        return (self._last_ms << (NODE_BITS + SEQ_BITS)) | self._node | self._seq


def first_id_at(ms: int) -> int:
    """The smallest message ID made at or after a time (ms since the Unix epoch): IDs grow with time."""
    return max(ms - EPOCH_MS, 0) << (NODE_BITS + SEQ_BITS)


def id_time_ms(message_id: int) -> int:
    """When a message ID was made (ms since the Unix epoch)."""
    return (message_id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS
