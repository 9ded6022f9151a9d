"""The exception hierarchy. Every exception the package raises on purpose is a :class:`Error`.

::

    Error
     +-- ConfigError (also ValueError)   a setting, endpoint or argument is unusable
     +-- ClosedError                      the client was closed
     +-- Unavailable                      no IDs within the timeout; .cause says why
     +-- ProtocolError                    bytes or replies that break protocol.md
     +-- ServerError                      the server answered ERROR; .code, .message
     |    +-- Unauthorized                ERROR UNAUTHORIZED: wrong or missing token
     +-- TLSError                         handshake or certificate failure
     +-- NetworkError                     connect, I/O, disconnect, timeouts, GOAWAY, DNS

``retryable`` says whether the same call can succeed later without changing anything. The
background driver keeps the most recent failure; a caller that times out gets
:class:`Unavailable` whose ``cause`` (and ``__cause__``) is that failure. Calls raise the
failure itself instead when every server refused the client for a reason waiting cannot fix
(a wrong token, TLS trust, a peer that is not a snowlease server).
"""

from __future__ import annotations

from typing import Optional


class Error(Exception):
    """Base of every snowlease exception."""

    #: Whether the same call may succeed later without changing anything.
    retryable: bool = False

    def __init__(self, message: str, *, addr: Optional[str] = None) -> None:
        super().__init__(message)
        #: The server address involved, ``host:port``, if any.
        self.addr = addr


class ConfigError(Error, ValueError):
    """A setting, endpoint or argument cannot be used; fix the call or the configuration."""


class ClosedError(Error):
    """The client was closed; every later call fails with this."""


class Unavailable(Error):
    """No IDs arrived within the client's ``timeout``. ``cause`` is the last failure seen
    (``None`` if no server answered at all yet)."""

    retryable = True

    def __init__(self, message: str, *, cause: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.cause = cause


class ProtocolError(Error):
    """The peer broke protocol.md: a corrupt frame, a reply that does not answer the request,
    more IDs than asked, IDs of another worker or crossing a tick, a range going backwards.
    The IDs of such a reply are never handed out; the connection is dropped. Not retryable:
    a server that breaks the contract is not trusted to start keeping it by itself (the
    client still reconnects, and other servers keep serving)."""


class ServerError(Error):
    """The server answered with an ERROR frame."""

    def __init__(
        self, code: int, message: str, *, addr: Optional[str] = None, retryable: bool = False
    ) -> None:
        from .wire import ErrorCode

        name = ErrorCode.name(code)
        where = f"{addr} answered" if addr else "server answered"
        super().__init__(f"{where} ERROR {name} ({code}): {message}", addr=addr)
        #: The wire error code (see :class:`snowlease.wire.ErrorCode`).
        self.code = code
        #: The server's text, for humans only.
        self.server_message = message
        self.retryable = retryable


class Unauthorized(ServerError):
    """ERROR UNAUTHORIZED: the server wants a HELLO with the right token."""


class TLSError(Error):
    """The TLS handshake failed: an untrusted or misnamed certificate, a refused client
    certificate, or a peer that does not speak TLS. Not retryable: it fails the same way until
    a certificate or a setting changes."""


class NetworkError(Error):
    """A connection could not be made or was lost: refused, reset, closed, timed out, a GOAWAY,
    or a name that did not resolve. Retryable: the client reconnects with backoff."""

    retryable = True


class ResolveError(NetworkError):
    """A name did not resolve (or resolved to nothing)."""
