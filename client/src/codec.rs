//! tokio-util `Decoder`/`Encoder` adapters over the pure [`crate::wire`] functions, so a
//! `Framed<TcpStream, _>` speaks the protocol. Bytes from the socket go through
//! `decode_request`/`decode_response` unchanged; frames to the socket are appended to the
//! write buffer by their `encode` methods. No logic lives here that the wire module lacks.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::wire::{self, Request, Response, WireError};

/// Errors a codec reports: the stream is corrupt, or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent bytes that are not protocol.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Server side: decodes requests, encodes responses.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCodec;

/// Client side: decodes responses, encodes requests.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

impl Decoder for ServerCodec {
    type Item = Request;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, CodecError> {
        Ok(wire::decode_request(src)?)
    }
}

impl Encoder<Response> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Response, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for ClientCodec {
    type Item = Response;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Response>, CodecError> {
        Ok(wire::decode_response(src)?)
    }
}

impl Encoder<Request> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Request, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::{FramedRead, FramedWrite};

    use super::*;

    #[tokio::test]
    async fn frames_cross_a_duplex_pipe_both_ways() {
        let (a, b) = tokio::io::duplex(64);
        let mut tx = FramedWrite::new(a, ClientCodec);
        let mut rx = FramedRead::new(b, ServerCodec);
        let sent = Request::Lease {
            request_id: 3,
            count: 10,
        };
        tx.send(sent.clone()).await.unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap(), sent);
    }
}
