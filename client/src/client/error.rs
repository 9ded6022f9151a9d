//! The client's error type. Connection tasks and the driver create these from socket errors,
//! bad frames and ERROR replies; the driver keeps the most recent one so a caller who times
//! out learns why, and [`Error::is_retryable`] tells that caller whether waiting can help.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Violation;
use crate::wire::{goaway, ErrorCode};

/// Everything that can go wrong between a caller and the servers.
///
/// `Clone` so the driver can keep the last failure and hand copies to every waiting caller;
/// I/O errors are shared behind an `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting or endpoint is unusable; fix the configuration.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A method was called with an argument it cannot serve.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`Client::connect`](super::Client::connect) was called outside a tokio runtime.
    #[error("Client::connect must run inside a tokio runtime; use BlockingClient outside one")]
    NoRuntime,
    /// [`BlockingClient`](super::BlockingClient) could not start its runtime thread.
    #[error("cannot start the blocking client's runtime: {0}")]
    Runtime(#[source] Arc<std::io::Error>),
    /// A name could not be resolved.
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        /// The endpoint as configured.
        endpoint: String,
        /// What the resolver said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A name resolved to no addresses.
    #[error("{endpoint} resolved to no addresses")]
    NoAddresses {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The TLS handshake failed for a reason on one side's configuration: the server's
    /// certificate is not trusted or not for this name, the server refused our client
    /// certificate, or the peer does not speak TLS. Not retryable: it fails the same way
    /// until a certificate or a setting changes.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The server's address.
        addr: SocketAddr,
        /// rustls's reason.
        reason: String,
    },
    /// Connecting (TCP, TLS if on, HELLO/WELCOME) did not finish in time.
    #[error("connecting to {addr} (TCP, TLS and HELLO/WELCOME) took longer than {timeout:?}")]
    ConnectTimeout {
        /// The server's address.
        addr: SocketAddr,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// A LEASE went unanswered for too long; the connection is presumed dead.
    #[error("{addr} did not answer a LEASE within {timeout:?}")]
    RequestTimeout {
        /// The server's address.
        addr: SocketAddr,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// An established connection failed.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The server's address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The server closed the connection without a GOAWAY.
    #[error("{addr} closed the connection")]
    Disconnected {
        /// The server's address.
        addr: SocketAddr,
    },
    /// The server said it is closing this connection.
    #[error("{addr} sent GOAWAY {}", goaway::name(*.reason))]
    GoAway {
        /// The server's address.
        addr: SocketAddr,
        /// See [`goaway`].
        reason: u16,
    },
    /// The server answered with an ERROR frame.
    #[error("{addr} answered ERROR {code}: {message}")]
    Server {
        /// The server's address.
        addr: SocketAddr,
        /// The wire error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server broke the protocol contract (bad frame, wrong count, range out of order,
    /// layout mismatch). Its IDs from that reply were not handed out.
    #[error("protocol violation by {addr}: {reason}")]
    Protocol {
        /// The server's address.
        addr: SocketAddr,
        /// What was wrong.
        reason: Violation,
    },
    /// No IDs arrived within the configured timeout.
    #[error("no IDs within {waited:?}; last problem: {cause}")]
    Unavailable {
        /// How long the caller waited.
        waited: Duration,
        /// The most recent failure the client saw, or why nothing arrived.
        cause: String,
    },
    /// The client was closed, or its runtime shut down.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// Whether the same call may succeed later without changing anything: the failure was
    /// about a server or the network, not about the configuration, the argument or this
    /// client having been closed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::InvalidArgument(_)
            | Error::NoRuntime
            | Error::Runtime(_)
            | Error::Protocol { .. }
            | Error::Tls { .. }
            | Error::Closed => false,
            Error::Server { code, .. } => code.is_retryable(),
            Error::Resolve { .. }
            | Error::NoAddresses { .. }
            | Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::RequestTimeout { .. }
            | Error::Io { .. }
            | Error::Disconnected { .. }
            | Error::GoAway { .. }
            | Error::Unavailable { .. } => true,
        }
    }

    /// The server's host actively refused the TCP connection: nothing listens on the port.
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, Error::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn network_failures_are_retryable_and_misuse_is_not() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(Error::Disconnected { addr }.is_retryable());
        assert!(Error::GoAway { addr, reason: 0 }.is_retryable());
        assert!(!Error::Closed.is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
        let unavailable = Error::Server {
            addr,
            code: ErrorCode::UNAVAILABLE,
            message: String::new(),
        };
        assert!(unavailable.is_retryable());
        let unauthorized = Error::Server {
            addr,
            code: ErrorCode::UNAUTHORIZED,
            message: String::new(),
        };
        assert!(!unauthorized.is_retryable());
        let untrusted = Error::Tls {
            addr,
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(!untrusted.is_retryable());
    }

    #[test]
    fn goaway_names_its_reason() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let text = Error::GoAway { addr, reason: 0 }.to_string();
        assert!(text.ends_with("GOAWAY SHUTDOWN"), "{text}");
    }
}
