"""Client settings: defaults with their reasons, endpoint parsing, backoff and TLS options.

A :class:`ClientConfig` is built from the keyword arguments of :class:`~snowlease.Client`,
checked once (:meth:`ClientConfig.validate`), and then only read by the driver.
"""

from __future__ import annotations

import ipaddress
import random
import ssl
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Tuple, Union

from .errors import ConfigError
from .wire import MAX_TOKEN_LEN

#: Port used when an endpoint names none: the server's default ``--listen`` port.
DEFAULT_PORT = 7609

#: Most IDs buffered: 262,144, as the Rust client. One worker issues at most 4,096 IDs per ms,
#: so this is ~64 ms of a whole server's output; more would only age toward ``max_age``.
DEFAULT_BUFFER_CAPACITY = 1 << 18

#: Fewest IDs kept on hand even when idle: 4,096, one maximal LEASE, so a burst after a quiet
#: period is served without a round trip, at a cost of 4,096 IDs per ``max_age`` to a server.
DEFAULT_LOW_WATER = 4096

#: IDs leased longer ago than this (seconds) are dropped unused, so an ID's timestamp is at
#: most this much older than the moment it is handed out.
DEFAULT_MAX_AGE = 1.0

#: Smallest ``max_age``: 10 ms. Expiry runs on a timer of ``max_age / 8`` and below 10 ms that
#: timer would be coarser than the age it enforces.
MIN_MAX_AGE = 0.010

#: LEASEs outstanding per connection: 16 x 4,096 IDs per round trip is 65 M IDs/s at a 1 ms
#: RTT, 16 times what a server issues, while a stalled server holds at most 16 requests.
DEFAULT_MAX_IN_FLIGHT = 16

#: TCP connect + TLS + HELLO/WELCOME limit: 2 s survives one lost SYN (resent after 1 s).
DEFAULT_CONNECT_TIMEOUT = 2.0

#: A LEASE unanswered this long drops its connection: a healthy server answers within
#: milliseconds. Demand moves off a *lagging* connection long before (see ``_policy``).
DEFAULT_REQUEST_TIMEOUT = 2.0

#: How long a call waits for IDs before :class:`~snowlease.Unavailable`: covers a failover
#: and one pod restarting, and reports an outage before typical 10-30 s request deadlines.
DEFAULT_TIMEOUT = 5.0

#: Periodic re-resolution of names while every connection is healthy: a scale-up behind a
#: headless Service is noticed within 30 s for one DNS query per name per 30 s. A lost or
#: silent connection re-resolves much sooner (``_policy.DEGRADED_RESOLVE_MAX``).
DEFAULT_RESOLVE_INTERVAL = 30.0

#: Smallest ``resolve_interval``: 1 s, so a client cannot become a load on the cluster's DNS.
MIN_RESOLVE_INTERVAL = 1.0

#: First reconnect delay (50 ms: a refused connection is not retried in a tight loop, a
#: server restarting on its port is back within a couple of attempts) and the cap (5 s, the
#: usual readiness probe period).
DEFAULT_BACKOFF = (0.050, 5.0)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: exponential from ``initial`` to ``max`` seconds, with "equal jitter"
    (a uniformly random point in ``[step / 2, step]``): never zero, so a dead server is not
    hammered, yet spread so clients cut off together do not reconnect in lockstep."""

    initial: float = DEFAULT_BACKOFF[0]
    max: float = DEFAULT_BACKOFF[1]

    def delay(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        """Delay before retry number ``attempt`` (0 for the first)."""
        step = min(self.initial * (1 << min(max(attempt, 0), 20)), self.max)
        r = (rng or random).random()
        return step / 2 + r * (step / 2)


@dataclass(frozen=True)
class TLSOptions:
    """How to reach a TLS lease port.

    Either ``context`` (an ``ssl.SSLContext`` used as it is) or ``ca_file`` (trust exactly
    the CA certificates in that PEM file, not the system store: a service like this one
    usually has a private CA). ``cert_file``/``key_file`` present a client certificate to a
    server started with ``--tls-client-ca``. ``server_name`` is the name the server's
    certificate must carry instead of each endpoint's host (or IP): for endpoints given as
    IPs, or a certificate issued for a Service name while the client dials pod addresses.
    """

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None
    context: Optional[ssl.SSLContext] = None

    def build_context(self) -> ssl.SSLContext:
        """The SSL context to use; reading the files here makes a bad file a
        :class:`ConfigError` at construction, not a failure per reconnect."""
        if self.context is not None:
            if self.ca_file or self.cert_file or self.key_file:
                raise ConfigError("TLSOptions: give either context or the files, not both")
            return self.context
        if not self.ca_file:
            raise ConfigError("TLSOptions needs ca_file (or a ready ssl.SSLContext)")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("TLSOptions: cert_file and key_file go together")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot use CA file {self.ca_file}: {e}") from e
        if self.cert_file and self.key_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(
                    f"cannot use client certificate {self.cert_file} / key {self.key_file}: {e}"
                ) from e
        return ctx


TLSArg = Union[None, TLSOptions, ssl.SSLContext]


@dataclass(frozen=True)
class Target:
    """An endpoint after parsing: ``host`` is an IP literal (never resolved) or a name
    (resolved to every address behind it)."""

    host: str
    port: int
    is_ip: bool

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Target:
    """Parses ``host:port``, ``ip:port``, ``[ipv6]:port``, or a bare host or IP (port 7609)."""
    s = text.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"endpoint {text!r}: {why}")

    if not s:
        raise bad("is empty")
    bare = s[1:-1] if s.startswith("[") and s.endswith("]") else s
    try:
        return Target(str(ipaddress.ip_address(bare)), DEFAULT_PORT, True)
    except ValueError:
        pass
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep:
            raise bad("is not a valid address (write IPv6 as [addr]:port)")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise bad("is not a valid address (write IPv6 as [addr]:port)") from None
        return Target(host, _port(port, bad), True)
    host, sep, port = s.rpartition(":")
    if not sep:
        return Target(s, DEFAULT_PORT, False)
    if ":" in host:
        raise bad("is not a valid address (write IPv6 as [addr]:port)")
    if not host:
        raise bad("has no host")
    p = _port(port, bad)
    try:
        return Target(str(ipaddress.IPv4Address(host)), p, True)
    except ValueError:
        return Target(host, p, False)


def _port(text: str, bad: Callable[[str], ConfigError]) -> int:
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise bad("port must be a number from 1 to 65535")


@dataclass
class ClientConfig:
    """Every setting of a client; see :class:`~snowlease.Client` for their meaning."""

    endpoints: List[str]
    token: bytes = b""
    tls: Optional[TLSOptions] = None
    max_age: float = DEFAULT_MAX_AGE
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    buffer_capacity: int = DEFAULT_BUFFER_CAPACITY
    low_water: int = DEFAULT_LOW_WATER
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    backoff: Backoff = field(default_factory=Backoff)
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL

    @staticmethod
    def endpoints_from(addrs: Union[str, Iterable[str]]) -> List[str]:
        """One endpoint string, or several (a comma-separated string also works)."""
        if isinstance(addrs, str):
            return [a for a in (p.strip() for p in addrs.split(",")) if a]
        out = list(addrs)
        for a in out:
            if not isinstance(a, str):
                raise ConfigError(f"endpoints must be strings, got {a!r}")
        return out

    def validate(self) -> Tuple[List[Target], Optional[ssl.SSLContext]]:
        """Checks every setting, with a message naming what is wrong; returns the parsed
        endpoints and the SSL context (``None`` for plaintext)."""
        if not self.endpoints:
            raise ConfigError("at least one endpoint is required")
        if self.buffer_capacity < 1:
            raise ConfigError("buffer_capacity must be at least 1")
        if not 0 <= self.low_water <= self.buffer_capacity:
            raise ConfigError(
                f"low_water ({self.low_water}) must be within 0..=buffer_capacity "
                f"({self.buffer_capacity})"
            )
        if self.max_age < MIN_MAX_AGE:
            raise ConfigError(f"max_age must be at least {MIN_MAX_AGE} s, got {self.max_age}")
        if self.resolve_interval < MIN_RESOLVE_INTERVAL:
            raise ConfigError(
                f"resolve_interval must be at least {MIN_RESOLVE_INTERVAL} s, "
                f"got {self.resolve_interval}"
            )
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1")
        for name, value in (
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("backoff.initial", self.backoff.initial),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be above zero, got {value}")
        if self.backoff.max < self.backoff.initial:
            raise ConfigError("backoff.max must not be below backoff.initial")
        if len(self.token) > MAX_TOKEN_LEN:
            raise ConfigError(f"token is {len(self.token)} bytes, the limit is {MAX_TOKEN_LEN}")
        targets = [parse_endpoint(e) for e in self.endpoints]
        ctx = self.tls.build_context() if self.tls is not None else None
        return targets, ctx


def tls_options(tls: TLSArg) -> Optional[TLSOptions]:
    """Normalises the ``tls`` argument: ``None``, a :class:`TLSOptions`, or an SSLContext."""
    if tls is None or isinstance(tls, TLSOptions):
        return tls
    if isinstance(tls, ssl.SSLContext):
        return TLSOptions(context=tls)
    raise ConfigError(f"tls must be a TLSOptions or an ssl.SSLContext, got {tls!r}")


def token_bytes(token: Union[None, str, bytes]) -> bytes:
    """The token as bytes (a ``str`` is UTF-8 encoded)."""
    if token is None:
        return b""
    if isinstance(token, str):
        return token.encode("utf-8")
    if isinstance(token, (bytes, bytearray)):
        return bytes(token)
    raise ConfigError(f"token must be str or bytes, got {type(token).__name__}")
