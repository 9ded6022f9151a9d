//! One task per server connection: socket I/O only, no decisions.
//!
//! The task connects (and, with TLS, completes the handshake), sends HELLO and waits for the
//! first reply, all under the connect timeout, then forwards every decoded frame to the
//! driver and writes every request the driver hands it, batching whatever is queued into one
//! flush. When the socket fails, the peer closes it, or the bytes stop being protocol, it
//! reports why as its last event and ends. The driver ends it early by aborting the task,
//! which closes the socket.

use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig};
#[cfg(feature = "tls")]
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use super::driver::ConnId;
use super::{Error, Violation};
use crate::codec::{ClientCodec, CodecError};
use crate::wire::{Request, Response};

/// What a connection task reports.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A frame arrived.
    Frame(Response),
    /// The connection is over; this is its last event.
    Closed(Error),
}

/// The driver's side of a connection task.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    /// Requests to write. Unbounded because the driver caps requests in flight itself.
    pub requests: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings a connection task needs.
#[derive(Debug, Clone)]
pub(crate) struct ConnParams {
    pub addr: SocketAddr,
    pub hello: Request,
    pub connect_timeout: Duration,
    /// The connector and the name to verify, or why there is none (a name no certificate
    /// can carry), reported as this connection's failure. `None`: plaintext.
    #[cfg(feature = "tls")]
    pub tls: Option<Result<(Arc<ClientConfig>, ServerName<'static>), Error>>,
}

/// Starts a connection task reporting to `events` as `(id, event)`.
pub(crate) fn spawn<E>(id: ConnId, params: ConnParams, events: mpsc::Sender<E>) -> ConnHandle
where
    E: From<(ConnId, ConnEvent)> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let why = run(id, &params, rx, &events).await;
        let _ = events.send(E::from((id, ConnEvent::Closed(why)))).await;
    });
    ConnHandle { requests: tx, task }
}

async fn run<E>(
    id: ConnId,
    params: &ConnParams,
    requests: mpsc::UnboundedReceiver<Request>,
    events: &mpsc::Sender<E>,
) -> Error
where
    E: From<(ConnId, ConnEvent)>,
{
    let addr = params.addr;
    let deadline = Instant::now() + params.connect_timeout;
    let timed_out = || Error::ConnectTimeout {
        addr,
        timeout: params.connect_timeout,
    };
    let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Error::Connect {
                addr,
                source: e.into(),
            }
        }
        Err(_) => return timed_out(),
    };
    // LEASE frames are 13 bytes; Nagle would hold each one for an ACK.
    let _ = stream.set_nodelay(true);
    #[cfg(feature = "tls")]
    if let Some(tls) = &params.tls {
        let (config, name) = match tls {
            Ok(pair) => pair.clone(),
            Err(e) => return e.clone(),
        };
        let connector = TlsConnector::from(config);
        let stream = match timeout_at(deadline, connector.connect(name, stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return super::tls::handshake_error(Error::Connect {
                    addr,
                    source: e.into(),
                })
            }
            Err(_) => return timed_out(),
        };
        let framed = Framed::new(stream, ClientCodec);
        return session(id, params, framed, deadline, requests, events).await;
    }
    session(
        id,
        params,
        Framed::new(stream, ClientCodec),
        deadline,
        requests,
        events,
    )
    .await
}

/// HELLO/WELCOME within the connect deadline, then frames and requests until the end.
async fn session<S, E>(
    id: ConnId,
    params: &ConnParams,
    mut framed: Framed<S, ClientCodec>,
    deadline: Instant,
    mut requests: mpsc::UnboundedReceiver<Request>,
    events: &mpsc::Sender<E>,
) -> Error
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: From<(ConnId, ConnEvent)>,
{
    let addr = params.addr;
    let greeting = async {
        framed
            .send(params.hello.clone())
            .await
            .map_err(|e| codec_error(addr, e))?;
        next_frame(&mut framed, addr).await
    };
    let first = match timeout_at(deadline, greeting).await {
        Ok(Ok(first)) => first,
        // With TLS 1.3 a refused client certificate shows up here, after the handshake.
        #[cfg(feature = "tls")]
        Ok(Err(e)) => return super::tls::handshake_error(e),
        #[cfg(not(feature = "tls"))]
        Ok(Err(e)) => return e,
        Err(_) => {
            return Error::ConnectTimeout {
                addr,
                timeout: params.connect_timeout,
            }
        }
    };
    if events
        .send(E::from((id, ConnEvent::Frame(first))))
        .await
        .is_err()
    {
        return Error::Closed;
    }
    loop {
        tokio::select! {
            frame = next_frame(&mut framed, addr) => match frame {
                Ok(frame) => {
                    if events.send(E::from((id, ConnEvent::Frame(frame)))).await.is_err() {
                        return Error::Closed;
                    }
                }
                Err(e) => return e,
            },
            request = requests.recv() => {
                let Some(request) = request else { return Error::Closed };
                if let Err(e) = write_batch(&mut framed, request, &mut requests).await {
                    return codec_error(addr, e);
                }
            }
        }
    }
}

/// Writes `first` and everything else already queued, then flushes once.
async fn write_batch<S: AsyncWrite + Unpin>(
    framed: &mut Framed<S, ClientCodec>,
    first: Request,
    queued: &mut mpsc::UnboundedReceiver<Request>,
) -> Result<(), CodecError> {
    framed.feed(first).await?;
    while let Ok(more) = queued.try_recv() {
        framed.feed(more).await?;
    }
    framed.flush().await
}

async fn next_frame<S: AsyncRead + Unpin>(
    framed: &mut Framed<S, ClientCodec>,
    addr: SocketAddr,
) -> Result<Response, Error> {
    match framed.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(codec_error(addr, e)),
        None => Err(Error::Disconnected { addr }),
    }
}

fn codec_error(addr: SocketAddr, e: CodecError) -> Error {
    match e {
        CodecError::Wire(e) => Error::Protocol {
            addr,
            reason: Violation::from_wire(e),
        },
        CodecError::Io(e) => Error::Io {
            addr,
            source: e.into(),
        },
    }
}
