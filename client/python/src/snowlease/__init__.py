"""snowlease: unique, time-sortable 64-bit IDs from a local buffer of leased blocks.

::

    import snowlease
    with snowlease.Client("snowlease-headless.snowlease.svc:7609") as client:
        id = client.next_id()          # a memory operation; the refill runs in the background
        print(client.decode(id))       # 2026-12-03T23:49:49.923Z worker 3 sequence 17

Modules: :mod:`snowlease.wire` (the codec, pure), :mod:`snowlease.layout` (IDs taken apart),
:mod:`snowlease.errors` (the exception hierarchy), :mod:`snowlease.client` (the clients).
"""

from .client import AsyncClient, Block, Client
from .config import Backoff, TLSOptions
from .errors import (
    ClosedError,
    ConfigError,
    Error,
    NetworkError,
    ProtocolError,
    ResolveError,
    ServerError,
    TLSError,
    Unauthorized,
    Unavailable,
)
from .layout import Layout, Parts

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Backoff",
    "Block",
    "Client",
    "ClosedError",
    "ConfigError",
    "Error",
    "Layout",
    "NetworkError",
    "Parts",
    "ProtocolError",
    "ResolveError",
    "ServerError",
    "TLSError",
    "TLSOptions",
    "Unauthorized",
    "Unavailable",
]
