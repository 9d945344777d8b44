"""Free loopback ports for the servers Percorso starts locally (brokers, workers' web servers,
the analytics page, test registries).

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same range it
draws the local ports of outgoing connections from. Between the probe and the server's own
bind, any client connecting anywhere can take it ("Address already in use": seen when a local
Kafka node started while tests were connecting to another). Ports are therefore drawn at random
from below the ephemeral range, where no outgoing connection lands, and probed before use.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FALLBACK_EPHEMERAL = (32768, 60999)
_LOWEST = 10000


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _FALLBACK_EPHEMERAL


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range where possible."""
    low, high = ephemeral_range()
    if low - _LOWEST >= 2000:
        pool = (_LOWEST, low)
    elif 65535 - high >= 2000:
        pool = (high + 1, 65536)
    else:
        pool = None
    if pool is not None:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(*pool)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
