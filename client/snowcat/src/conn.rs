//! One connection to a server, frame by frame: TCP, or TLS over TCP with `--tls`.
//!
//! [`connect`] resolves, connects and (with `--tls`) completes the handshake, then splits the
//! stream into halves. Bytes arrive from the socket into a read buffer; [`FrameReader::next_frame`] splits one
//! response off its front with [`wire::decode_response`] and hands back both the decoded
//! [`Response`] and the exact bytes it came from (for `--hex`). Requests go out through
//! [`FrameWriter::send`] as whole encoded frames. Every wait is bounded by the caller's
//! deadline so snowcat never hangs on a silent server.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use snowlease::wire::{self, Request, Response, Welcome, WorkerSet, LEN_PREFIX, MAX_FRAME_LEN};

use crate::common::{Common, Failure};

/// The read half of a TCP or TLS stream.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of a TCP or TLS stream.
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// A decoded reply and the bytes it was decoded from.
pub struct Frame {
    /// The reply.
    pub response: Response,
    /// Its bytes on the wire, length prefix included.
    pub bytes: Bytes,
}

/// What can go wrong while waiting for a reply.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// Nothing complete arrived before the deadline.
    #[error("no reply within the timeout")]
    TimedOut,
    /// The server sent bytes that are not protocol.
    #[error("the server sent a malformed frame ({error}); bytes: {hex}")]
    Malformed {
        /// Why decoding failed.
        error: wire::WireError,
        /// The start of the offending bytes.
        hex: String,
    },
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// The read half: a socket and the bytes read but not yet decoded.
pub struct FrameReader {
    stream: ReadHalf,
    buf: BytesMut,
}

/// The write half.
pub struct FrameWriter {
    stream: WriteHalf,
}

/// Resolves `--addr`, connects to the first address that answers and, with `--tls`, completes
/// the handshake, all within `timeout`.
pub async fn connect(
    common: &Common,
    timeout: Duration,
) -> Result<(FrameReader, FrameWriter), Failure> {
    let deadline = Instant::now() + timeout;
    let addr = common.addr.as_str();
    let stream = connect_tcp(addr, timeout, deadline).await?;
    let (read, write): (ReadHalf, WriteHalf) = if common.tls {
        let (read, write) = tokio::io::split(tls(common, stream, deadline).await?);
        (Box::new(read), Box::new(write))
    } else {
        let (read, write) = stream.into_split();
        (Box::new(read), Box::new(write))
    };
    let reader = FrameReader {
        stream: read,
        buf: BytesMut::with_capacity(8 * 1024),
    };
    Ok((reader, FrameWriter { stream: write }))
}

#[cfg(feature = "tls")]
async fn tls(
    common: &Common,
    stream: TcpStream,
    deadline: Instant,
) -> Result<snowlease::tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    use snowlease::client::TlsOptions;
    let Some(ca) = &common.tls_ca else {
        return Err(Failure::Usage("--tls needs --tls-ca FILE".into()));
    };
    let mut options = TlsOptions::ca_file(ca);
    if let Some(name) = &common.tls_server_name {
        options = options.server_name(name);
    }
    if let (Some(cert), Some(key)) = (&common.tls_cert, &common.tls_key) {
        options = options.client_identity(cert, key);
    }
    let host = common
        .addr
        .rsplit_once(':')
        .map_or(common.addr.as_str(), |(host, _)| host);
    let name = options
        .name_for(host)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let connector = options
        .connector()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    match timeout_at(deadline, connector.connect(name, stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(Failure::Connect(format!(
            "TLS handshake with {} failed: {e}",
            common.addr
        ))),
        Err(_) => Err(Failure::Connect(format!(
            "TLS handshake with {} timed out",
            common.addr
        ))),
    }
}

#[cfg(not(feature = "tls"))]
async fn tls(_: &Common, stream: TcpStream, _: Instant) -> Result<TcpStream, Failure> {
    drop(stream);
    Err(Failure::Usage(
        "this snowcat was built without the `tls` feature".into(),
    ))
}

/// Connects to the first address `addr` resolves to that answers.
async fn connect_tcp(
    addr: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<TcpStream, Failure> {
    let addrs = match timeout_at(deadline, tokio::net::lookup_host(addr)).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => return Err(Failure::Connect(format!("cannot resolve {addr:?}: {e}"))),
        Err(_) => return Err(Failure::Connect(format!("resolving {addr:?} timed out"))),
    };
    let mut last_error = format!("{addr:?} resolved to no address");
    for sockaddr in addrs {
        match timeout_at(deadline, TcpStream::connect(sockaddr)).await {
            Ok(Ok(stream)) => {
                // Requests are tiny and latency is what ping and the netcat mode show.
                stream.set_nodelay(true).ok();
                return Ok(stream);
            }
            Ok(Err(e)) => last_error = format!("cannot connect to {sockaddr}: {e}"),
            Err(_) => {
                last_error = format!("connecting to {sockaddr} timed out after {timeout:?}");
                break;
            }
        }
    }
    Err(Failure::Connect(last_error))
}

impl FrameReader {
    /// The next reply, reading from the socket only when the buffer holds no complete frame.
    pub async fn next_frame(&mut self, deadline: Instant) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.decoded()? {
                return Ok(frame);
            }
            match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadError::TimedOut),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    fn decoded(&mut self) -> Result<Option<Frame>, ReadError> {
        let total = frame_len(&self.buf);
        let snapshot = match total {
            Some(total) if self.buf.len() >= total => Bytes::copy_from_slice(&self.buf[..total]),
            _ => Bytes::new(),
        };
        match wire::decode_response(&mut self.buf) {
            Ok(Some(response)) => Ok(Some(Frame {
                response,
                bytes: snapshot,
            })),
            Ok(None) => Ok(None),
            Err(error) => {
                let shown = &self.buf[..self.buf.len().min(64)];
                Err(ReadError::Malformed {
                    error,
                    hex: hex(shown),
                })
            }
        }
    }
}

/// Total length of the frame at the front of `buf` (prefix included), if the prefix is there
/// and valid.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; LEN_PREFIX] = buf.get(..LEN_PREFIX)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix);
    (1..=MAX_FRAME_LEN)
        .contains(&len)
        .then(|| LEN_PREFIX + len as usize)
}

impl FrameWriter {
    /// Writes already-encoded frames and flushes them (TLS holds records until a flush).
    pub async fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server did not accept the request within the timeout",
            )),
        }
    }
}

/// Sends HELLO and waits for WELCOME: the subcommands that need the server's layout or
/// max_lease (and any server that requires a token) start this way. Speaks version 1.
pub async fn handshake(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Welcome, Failure> {
    handshake_version(reader, writer, token, wire::VERSION, timeout)
        .await
        .map(|(welcome, _)| welcome)
}

/// Sends HELLO offering `version` and waits for WELCOME; returns it with the worker set a
/// version-2 WELCOME carries (`None` from a server that answered version 1).
pub async fn handshake_version(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    token: Option<&str>,
    version: u16,
    timeout: Duration,
) -> Result<(Welcome, Option<WorkerSet>), Failure> {
    let deadline = Instant::now() + timeout;
    let hello = Request::Hello {
        version,
        token: Bytes::copy_from_slice(token.unwrap_or("").as_bytes()),
    };
    let frame = round_trip(reader, writer, &hello, deadline, "HELLO", "WELCOME").await?;
    match frame.response {
        Response::Welcome(welcome) if welcome.version == wire::VERSION => Ok((welcome, None)),
        Response::WelcomeV2 { welcome, workers }
            if (wire::VERSION_2..=version).contains(&welcome.version) =>
        {
            Ok((welcome, Some(workers)))
        }
        other => Err(Failure::Failed(format!(
            "expected WELCOME of version {version} or lower in reply to HELLO, got {}",
            crate::format::response_line(&other, &snowlease::Layout::DEFAULT)
        ))),
    }
}

/// Sends `request` and waits for the next reply, both by `deadline`. A failure names the request
/// (`sent`) or the reply waited for (`awaited`).
pub async fn round_trip(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    request: &Request,
    deadline: Instant,
    sent: &str,
    awaited: &str,
) -> Result<Frame, Failure> {
    writer
        .send(&request.to_bytes(), deadline)
        .await
        .map_err(|e| Failure::Failed(format!("sending {sent} failed: {e}")))?;
    reader
        .next_frame(deadline)
        .await
        .map_err(|e| Failure::Failed(format!("waiting for {awaited}: {e}")))
}

/// Lower-case hex of `bytes`, no separators.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_needs_a_valid_prefix() {
        assert_eq!(frame_len(&[0, 0, 0]), None);
        assert_eq!(frame_len(&[0, 0, 0, 0]), None);
        assert_eq!(frame_len(&[0, 0, 0, 9, 2]), Some(13));
        assert_eq!(frame_len(&[0xff, 0, 0, 0]), None);
    }

    #[test]
    fn hex_is_lower_case_without_separators() {
        assert_eq!(hex(&[0, 0x0a, 0xff]), "000aff");
    }
}
