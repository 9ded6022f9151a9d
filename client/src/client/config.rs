//! Client settings. A [`ClientConfig`] is built by the caller, checked once by
//! [`ClientConfig::validate`] when the client connects (turning endpoint strings into
//! [`Target`]s), and then read by the driver; nothing here changes after that.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use super::Error;
use crate::wire::{MAX_TOKEN_LEN, MAX_VERSION, VERSION};

/// Port used when an endpoint names none: the server's default `--listen` port.
pub const DEFAULT_PORT: u16 = 7609;

/// The server's default admin (HTTP) port, named in the hint when a client is pointed at it.
pub const DEFAULT_ADMIN_PORT: u16 = 7610;

/// Default [`ClientConfig::buffer_capacity`]: 262,144 IDs. One worker issues at most 4,096
/// IDs per millisecond (4.096 M/s), so this holds ~64 ms of a one-worker server's output:
/// enough for the 50 ms refill horizon at the highest rate such a server can feed, and no
/// more, because anything beyond that would only age toward `max_age` and be thrown away. A
/// server holding several worker ids (`--workers-per-pod`) feeds more: the default still
/// reaches a 4-worker server's 16.4 M IDs/s on loopback (measured with `tests/bulk.rs`), but
/// a client drawing from many such servers at once should hold about 50 ms of its rate (see
/// [`Client::lease_bulk`](super::Client::lease_bulk)).
pub const DEFAULT_BUFFER_CAPACITY: u64 = 1 << 18;

/// Default [`ClientConfig::low_water`]: 4,096 IDs, one maximal LEASE (a full tick). An idle
/// client thus keeps one lease around, so a burst of up to 4,096 IDs after a quiet period is
/// served without a round trip, and costs a server 4,096 IDs per `max_age` (0.1 % of one
/// worker's 4.096 M/s) to keep fresh.
pub const DEFAULT_LOW_WATER: u64 = 4096;

/// Default [`ClientConfig::max_age`]: 1 s. An ID's timestamp is then at most a second older
/// than the moment it is used, which keeps IDs sortable by creation time to within a second
/// while a buffer refreshed once a second costs a server next to nothing.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);

/// Smallest accepted `max_age`: 10 ms. Expiry runs on a timer of `max_age / 8` (at least
/// 1 ms), and below 10 ms that timer would be coarser than the age it enforces.
pub const MIN_MAX_AGE: Duration = Duration::from_millis(10);

/// Default [`ClientConfig::resolve_interval`]: 30 s. A scale-up of a headless Service is
/// noticed within 30 s, at the cost of one DNS query per name per 30 s.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Smallest accepted [`ClientConfig::resolve_interval`]: 1 s, so a client cannot turn itself
/// into a load on the cluster's DNS.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// Default [`ClientConfig::max_in_flight`]: 16 LEASEs per connection. 16 x 4,096 IDs per
/// round trip at a 1 ms in-cluster RTT is 65 M IDs/s, 16 times what one server can issue, so
/// the cap never limits throughput, while a stalled server holds at most 16 requests.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// Default [`ClientConfig::connect_timeout`]: 2 s for TCP connect plus HELLO/WELCOME. Linux
/// resends a lost SYN after 1 s, so 2 s survives one lost SYN; a pod that cannot answer a
/// greeting in 2 s is better skipped in favour of its peers.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default [`ClientConfig::request_timeout`]: 2 s for a LEASE reply. A healthy server answers
/// in microseconds, or within a few milliseconds when demand outruns its clock; a connection
/// silent for 2 s is dead even if TCP has not noticed yet.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Shortest quiet time after which a connection with LEASEs outstanding counts as silent:
/// 20 ms (the limit is four times the connection's usual gap between replies, and never
/// less than this). Measured on loopback with four servers at their 4.096 M IDs/s ceiling:
/// 99.8 % of reply gaps were under 8 ms and 0.1 % between 16 and 32 ms, and the buffer holds
/// 25 to 50 ms of demand (the refill horizon), so a floor of 20 ms lets the answering servers
/// take over before a caller runs dry. A healthy server mistaken for a silent one (two per
/// run in that measurement, at start-up, while the state file was first written) costs only
/// IDs asked of the others too: its late replies still go to the buffer. See
/// [`ClientConfig`]'s "Silent servers".
pub const MIN_SILENCE: Duration = Duration::from_millis(20);

/// Default [`ClientConfig::timeout`]: 5 s that `next_id` waits on an empty buffer. That covers
/// a failed-over reconnect (backoff starts at 50 ms) and a single pod restarting, and still
/// reports an outage well before typical 10-30 s upstream request deadlines.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default first reconnect delay: 50 ms, long enough that a refused connection is not
/// retried in a tight loop, short enough that a server restarting on the same port (about
/// 100 ms to bind again) is back within a couple of attempts.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);

/// Default longest reconnect delay: 5 s, the usual Kubernetes readiness probe period, so a
/// replacement pod is found within about one probe of becoming ready.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reconnect delays: exponential from `initial` to `max`, with jitter so that many clients
/// cut off by the same server restart do not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `attempt` (0 for the first): the exponential step `base`,
    /// then a uniformly random point in `[base / 2, base]` ("equal jitter": never zero, so a
    /// dead server is not hammered, yet spread over half the window).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_from(attempt, &mut fastrand::Rng::new())
    }

    /// [`Backoff::delay`] with the jitter drawn from `rng`, so the driver's decisions can be
    /// replayed in tests from a seed.
    pub(crate) fn delay_from(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = base / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.u64(0..=spread))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// Settings for [`Client`](super::Client) and [`BlockingClient`](super::BlockingClient).
///
/// # Silent servers
/// A server can stop answering without closing its connections (a stopped process, a
/// network partition that drops packets). The client then does not wait for
/// [`request_timeout`](ClientConfig::request_timeout): a connection that owes replies and has
/// been quiet for four times its usual gap between replies, and at least [`MIN_SILENCE`]
/// (20 ms), stops counting as IDs on the way and gets no new requests, so the servers that
/// answer are asked instead; direct [`lease`](super::Client::lease) calls waiting on it are
/// sent again elsewhere. Its late replies, if they come, are checked like any other and go
/// to the buffer, so no ID is handed out twice. After `request_timeout` the connection is
/// dropped and reconnected as usual. A name that lost a server (silent or gone) is resolved
/// again after 250 ms and then every 2 s at most, so a server that comes back, under its
/// old address or a new one, is connected within 2 s of reappearing in DNS (instead of one
/// [`resolve_interval`](ClientConfig::resolve_interval), 30 s by default).
///
/// "Not noticeably longer", measured with four server binaries on loopback (each at its
/// 4.096 M IDs/s ceiling, client pinned to another core) and two of them stopped with
/// SIGSTOP: the worst 250 ms window of `next_id()` throughput was 0.46 to 0.50 of the
/// healthy median over five runs (0.5 is the two remaining servers' share), the longest
/// single `next_id()` wait 16 to 65 ms against 11 to 40 ms with all four healthy. Before
/// this, callers got nothing for about 2 s (`request_timeout`).
///
/// ```
/// use std::time::Duration;
/// let config = snowlease::ClientConfig::new(["snowlease-headless.snowlease.svc:7609"])
///     .max_age(Duration::from_millis(500))
///     .token("s3cret");
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) buffer_capacity: u64,
    pub(crate) low_water: u64,
    pub(crate) max_age: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) resolve_interval: Duration,
    pub(crate) token: Bytes,
    pub(crate) protocol_version: u16,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::TlsOptions>,
}

/// An endpoint after parsing: a fixed address, or a name to resolve on every reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An IP address and port; never resolved.
    Addr(SocketAddr),
    /// `host:port` for `tokio::net::lookup_host`; may resolve to many addresses.
    Name(String),
}

impl ClientConfig {
    /// Settings with every default, for these endpoints. Each endpoint is `host:port`,
    /// `ip:port`, `[ipv6]:port`, or a bare host or IP (port 7609). A name may resolve to
    /// several addresses (a Kubernetes headless Service); the client connects to all.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            buffer_capacity: DEFAULT_BUFFER_CAPACITY,
            low_water: DEFAULT_LOW_WATER,
            max_age: DEFAULT_MAX_AGE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            backoff: Backoff::default(),
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            token: Bytes::new(),
            protocol_version: MAX_VERSION,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Most IDs the buffer holds (leased and unused). The refill target follows the draw
    /// rate (about 50 ms worth) up to this cap.
    pub fn buffer_capacity(mut self, ids: u64) -> Self {
        self.buffer_capacity = ids;
        self
    }

    /// Fewest IDs the client keeps on hand: below this it leases more even when idle.
    pub fn low_water(mut self, ids: u64) -> Self {
        self.low_water = ids;
        self
    }

    /// IDs leased longer ago than this are thrown away unused, so an ID's timestamp stays
    /// close to the moment it is handed out. At least 10 ms.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Most LEASE requests outstanding on one connection.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    /// Limit on TCP connect plus the HELLO/WELCOME exchange.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit on a LEASE reply; a connection past it is dropped and replaced.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long `connect`, `next_id`, `next_ids` and `lease` wait for a server before
    /// returning [`Error::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reconnect delays.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often a name is resolved again while its connections are healthy, so servers
    /// added behind it (a StatefulSet scaled up behind a headless Service) get connections.
    /// A connection that is lost or goes silent makes its name resolve again sooner: before
    /// the reconnect, and 250 ms later, then in steps doubling to 2 s (or this interval, if
    /// shorter) while the name has fewer answering servers than before, for up to 5 minutes;
    /// so a server back in DNS is connected within 2 s. At least 1 s.
    pub fn resolve_interval(mut self, every: Duration) -> Self {
        self.resolve_interval = every;
        self
    }

    /// Shared secret sent in HELLO (at most 255 bytes).
    pub fn token(mut self, token: impl Into<Bytes>) -> Self {
        self.token = token.into();
        self
    }

    /// Highest protocol version offered in HELLO: 2 (the default) or 1.
    ///
    /// Version 2 lets the client ask with BULK_LEASE for many milliseconds' worth of IDs,
    /// from every worker id a server process holds, in one round trip; it does so on its own
    /// once its draw rate wants more than one LEASE (4,096 IDs) per connection per refill,
    /// and keeps asking with LEASE below that. A server that speaks only version 1 answers
    /// with a version-1 WELCOME and is used exactly as before, so the default works with
    /// old and new servers alike. `protocol_version(1)` never sends BULK_LEASE: every
    /// connection then draws from its server's home worker alone (at most 4.096 M IDs/s per
    /// connection), one LEASE per millisecond's worth, as clients before version 2 did;
    /// useful for comparing the two, or behind something that only passes version 1.
    pub fn protocol_version(mut self, version: u16) -> Self {
        self.protocol_version = version;
        self
    }

    /// Speak TLS to every endpoint. The certificate each server shows must chain to the
    /// configured CA and carry the endpoint's host name (or IP), unless
    /// [`TlsOptions::server_name`](super::TlsOptions::server_name) names another.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, options: super::TlsOptions) -> Self {
        self.tls = Some(options);
        self
    }

    /// Checks every setting and parses the endpoints, with a message naming what is wrong.
    pub(crate) fn validate(&self) -> Result<Vec<Target>, Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.endpoints.is_empty() {
            return bad("at least one endpoint is required".into());
        }
        if self.buffer_capacity == 0 {
            return bad("buffer_capacity must be at least 1".into());
        }
        if self.low_water > self.buffer_capacity {
            return bad(format!(
                "low_water ({}) must not exceed buffer_capacity ({})",
                self.low_water, self.buffer_capacity
            ));
        }
        if self.resolve_interval < MIN_RESOLVE_INTERVAL {
            return bad(format!(
                "resolve_interval must be at least {MIN_RESOLVE_INTERVAL:?}, got {:?}",
                self.resolve_interval
            ));
        }
        if self.max_age < MIN_MAX_AGE {
            return bad(format!(
                "max_age must be at least {MIN_MAX_AGE:?}, got {:?}",
                self.max_age
            ));
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("timeout", self.timeout),
            ("backoff.initial", self.backoff.initial),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be above zero"));
            }
        }
        if self.backoff.max < self.backoff.initial {
            return bad("backoff.max must not be below backoff.initial".into());
        }
        if !(VERSION..=MAX_VERSION).contains(&self.protocol_version) {
            return bad(format!(
                "protocol_version must be {VERSION} to {MAX_VERSION}, got {}",
                self.protocol_version
            ));
        }
        if self.token.len() > MAX_TOKEN_LEN {
            return bad(format!(
                "token is {} bytes, the limit is {MAX_TOKEN_LEN}",
                self.token.len()
            ));
        }
        let targets: Vec<Target> = self
            .endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<_, _>>()?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            for target in &targets {
                tls.name_for(&target.host())?;
            }
        }
        Ok(targets)
    }
}

#[cfg(feature = "tls")]
impl Target {
    /// The host part: the IP, or the name without its port. What a TLS certificate must name.
    pub(crate) fn host(&self) -> String {
        match self {
            Target::Addr(addr) => addr.ip().to_string(),
            Target::Name(name) => name
                .rsplit_once(':')
                .map_or(name.as_str(), |(host, _)| host)
                .to_owned(),
        }
    }
}

/// Parses one endpoint string; see [`ClientConfig::new`] for the accepted forms.
pub(crate) fn parse_endpoint(text: &str) -> Result<Target, Error> {
    let s = text.trim();
    let bad = |why: &str| Err(Error::Config(format!("endpoint {text:?}: {why}")));
    if s.is_empty() {
        return bad("is empty");
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, DEFAULT_PORT)));
    }
    match s.rsplit_once(':') {
        None => Ok(Target::Name(format!("{s}:{DEFAULT_PORT}"))),
        Some((host, _)) if host.contains(':') || host.contains('[') => {
            bad("is not a valid address (write IPv6 as [addr]:port)")
        }
        Some(("", _)) => bad("has no host"),
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Target::Name(format!("{host}:{p}"))),
            _ => bad("port must be a number from 1 to 65535"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_in_every_documented_form() {
        let addr = |s: &str| Target::Addr(s.parse().unwrap());
        assert_eq!(parse_endpoint("127.0.0.1:9").unwrap(), addr("127.0.0.1:9"));
        assert_eq!(parse_endpoint("[::1]:9").unwrap(), addr("[::1]:9"));
        assert_eq!(parse_endpoint(" 10.0.0.1 ").unwrap(), addr("10.0.0.1:7609"));
        assert_eq!(parse_endpoint("::1").unwrap(), addr("[::1]:7609"));
        assert_eq!(parse_endpoint("[::1]").unwrap(), addr("[::1]:7609"));
        assert_eq!(
            parse_endpoint("ids.svc:80").unwrap(),
            Target::Name("ids.svc:80".into())
        );
        assert_eq!(
            parse_endpoint("ids").unwrap(),
            Target::Name("ids:7609".into())
        );
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "empty"),
            (":80", "no host"),
            ("ids:http", "port must be"),
            ("ids:0", "port must be"),
            ("ids:70000", "port must be"),
            ("fe80::1::2:80", "IPv6"),
        ] {
            let err = parse_endpoint(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let base = || ClientConfig::new(["127.0.0.1:1"]);
        assert!(base().validate().is_ok());
        let cases = [
            (ClientConfig::new(Vec::<String>::new()), "at least one"),
            (base().buffer_capacity(0), "buffer_capacity"),
            (base().buffer_capacity(10).low_water(11), "low_water"),
            (base().max_age(Duration::from_millis(1)), "max_age"),
            (
                base().resolve_interval(Duration::from_millis(10)),
                "resolve_interval",
            ),
            (base().max_in_flight(0), "max_in_flight"),
            (base().timeout(Duration::ZERO), "timeout must"),
            (base().token(vec![0u8; 256]), "token"),
            (base().protocol_version(0), "protocol_version"),
            (base().protocol_version(3), "protocol_version"),
            (
                base().backoff(Backoff {
                    initial: Duration::from_secs(2),
                    max: Duration::from_secs(1),
                }),
                "backoff.max",
            ),
        ];
        for (config, why) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = b.delay(0);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = b.delay(2);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            let late = b.delay(u32::MAX);
            assert!((Duration::from_millis(500)..=Duration::from_secs(1)).contains(&late));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3)).collect();
        assert!(spread.len() > 1, "delays are jittered");
    }
}
