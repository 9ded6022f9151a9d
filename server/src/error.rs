//! Why a server could not start: one error type for everything [`crate::start()`] does, each
//! variant wrapping the module that refused, so the binary prints one line naming the value.

use std::io;

use crate::config::ConfigError;
use crate::generator::GeneratorError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Worker id outside the layout.
    #[error(transparent)]
    Generator(#[from] GeneratorError),
    /// The state file refuses.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The state directory is held by another process, or its lock file is unusable.
    #[error(transparent)]
    Lock(#[from] crate::lockfile::LockError),
    /// The token file is unusable.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// A TLS file is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding a port or starting a thread failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

/// Maps an `io::Error` to [`StartError::Io`] saying what was being done.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}
