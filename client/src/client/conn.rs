//! One task per server connection: socket I/O only, no decisions.
//!
//! The task connects, sends HELLO and waits for the first reply under the connect timeout,
//! then forwards every decoded frame to the driver and writes every request the driver hands
//! it, batching whatever is queued into one flush. When the socket fails, the peer closes it,
//! or the bytes stop being protocol, it reports why as its last event and ends. The driver
//! ends it early by aborting the task, which closes the socket.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::Error;
use crate::codec::{ClientCodec, CodecError};
use crate::wire::{Request, Response};

/// Identifies a connection for its whole life; never reused, so events from a connection
/// the driver already dropped are recognised and ignored.
pub(crate) type ConnId = u64;

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
    mut requests: mpsc::UnboundedReceiver<Request>,
    events: &mpsc::Sender<E>,
) -> Error
where
    E: From<(ConnId, ConnEvent)>,
{
    let addr = params.addr;
    let handshake = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| Error::Connect {
            addr,
            source: e.into(),
        })?;
        // LEASE frames are 13 bytes; Nagle would hold each one for an ACK.
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, ClientCodec);
        framed
            .send(params.hello.clone())
            .await
            .map_err(|e| codec_error(addr, e))?;
        let first = next_frame(&mut framed, addr).await?;
        Ok::<_, Error>((framed, first))
    };
    let (mut framed, first) = match tokio::time::timeout(params.connect_timeout, handshake).await {
        Ok(Ok(pair)) => pair,
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
async fn write_batch(
    framed: &mut Framed<TcpStream, ClientCodec>,
    first: Request,
    queued: &mut mpsc::UnboundedReceiver<Request>,
) -> Result<(), CodecError> {
    framed.feed(first).await?;
    while let Ok(more) = queued.try_recv() {
        framed.feed(more).await?;
    }
    framed.flush().await
}

async fn next_frame(
    framed: &mut Framed<TcpStream, ClientCodec>,
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
            reason: e.to_string(),
        },
        CodecError::Io(e) => Error::Io {
            addr,
            source: e.into(),
        },
    }
}
