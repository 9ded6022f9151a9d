//! `snowcat lease N`: HELLO for the server's max_lease, then LEASE requests pipelined up to
//! [`MAX_IN_FLIGHT`] at a time, each asking for what is still unasked (at most max_lease).
//! A reply may carry fewer IDs than asked (the rest of a tick); the shortfall goes back into
//! the unasked pool, so N IDs are printed in the end whatever the split. Replies come back in
//! request order, which is checked, and IDs go to a buffered stdout.

use std::collections::VecDeque;
use std::io::{BufWriter, Write};

use clap::Args;
use tokio::time::Instant;

use snowlease::wire::{goaway, Request, Response};

use crate::conn::{self, FrameReader, FrameWriter};
use crate::{Common, Failure};

/// Requests kept in flight. Sixteen full requests are 16 ms of one worker's output, more than a
/// loopback or LAN round trip, so the server never waits on snowcat; the bound keeps a huge N
/// from queueing requests the server would answer long after the timeout.
const MAX_IN_FLIGHT: usize = 16;

/// Arguments of `snowcat lease`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// How many IDs to lease (may exceed the server's max_lease; requests are split).
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Print `first count` per block received instead of every ID.
    #[arg(long)]
    ranges: bool,
}

/// The requests sent and not yet answered, oldest first.
struct Pipeline {
    in_flight: VecDeque<(u32, u32)>,
    unasked: u64,
    next_request_id: u32,
    max_lease: u32,
}

impl Pipeline {
    /// Encodes requests until the window is full or nothing is left to ask.
    fn fill(&mut self, out: &mut bytes::BytesMut) {
        while self.in_flight.len() < MAX_IN_FLIGHT && self.unasked > 0 {
            let ask = self.unasked.min(u64::from(self.max_lease)) as u32;
            self.unasked -= u64::from(ask);
            self.next_request_id = self.next_request_id.wrapping_add(1);
            let request = Request::Lease {
                request_id: self.next_request_id,
                count: ask,
            };
            request.encode(out);
            self.in_flight.push_back((self.next_request_id, ask));
        }
    }

    /// Checks a LEASED reply against the oldest request and returns its block.
    fn accept(&mut self, request_id: u32, count: u32) -> Result<(), Failure> {
        let Some((expected_id, asked)) = self.in_flight.pop_front() else {
            return Err(Failure::Failed(format!(
                "LEASED id={request_id} arrived with no request outstanding"
            )));
        };
        if request_id != expected_id {
            return Err(Failure::Failed(format!(
                "replies out of order: expected LEASED id={expected_id}, got id={request_id}"
            )));
        }
        if count == 0 || count > asked {
            return Err(Failure::Failed(format!(
                "LEASED id={request_id} carries {count} IDs for a request of {asked}"
            )));
        }
        self.unasked += u64::from(asked - count);
        Ok(())
    }
}

/// Runs `snowcat lease`.
pub async fn run(common: &Common, args: &LeaseArgs) -> Result<(), Failure> {
    let timeout = common.timeout();
    let (mut reader, mut writer) = conn::connect(common, timeout).await?;
    let welcome =
        conn::handshake(&mut reader, &mut writer, common.token.as_deref(), timeout).await?;
    if welcome.max_lease == 0 {
        return Err(Failure::Failed("the server announced max_lease 0".into()));
    }
    let mut pipeline = Pipeline {
        in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
        unasked: args.count,
        next_request_id: 0,
        max_lease: welcome.max_lease,
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = pump(
        &mut pipeline,
        &mut reader,
        &mut writer,
        &mut out,
        args,
        timeout,
    )
    .await;
    out.flush().map_err(Failure::stdout)?;
    result
}

async fn pump(
    pipeline: &mut Pipeline,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    out: &mut impl Write,
    args: &LeaseArgs,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    let mut requests = bytes::BytesMut::new();
    let mut received = 0u64;
    loop {
        pipeline.fill(&mut requests);
        if !requests.is_empty() {
            writer
                .send(&requests, Instant::now() + timeout)
                .await
                .map_err(|e| Failure::Failed(format!("sending LEASE failed: {e}")))?;
            requests.clear();
        }
        if pipeline.in_flight.is_empty() {
            return Ok(());
        }
        let frame = reader
            .next_frame(Instant::now() + timeout)
            .await
            .map_err(|e| Failure::Failed(format!("{e} after {received} of {} IDs", args.count)))?;
        match frame.response {
            Response::Leased {
                request_id,
                first_id,
                count,
            } => {
                pipeline.accept(request_id, count)?;
                received += u64::from(count);
                print_block(out, first_id, count, args.ranges).map_err(Failure::stdout)?;
            }
            Response::Error {
                request_id,
                code,
                message,
            } => {
                return Err(Failure::Failed(format!(
                    "server ERROR for request {request_id}: {code:?}: {message} \
                     (after {received} of {} IDs)",
                    args.count
                )))
            }
            Response::GoAway { reason } => {
                return Err(Failure::Failed(format!(
                    "server sent GOAWAY {} after {received} of {} IDs",
                    goaway::name(reason),
                    args.count
                )))
            }
            other => {
                return Err(Failure::Failed(format!(
                    "unexpected reply to LEASE: {}",
                    crate::format::response_line(&other, &snowlease::Layout::DEFAULT)
                )))
            }
        }
    }
}

fn print_block(out: &mut impl Write, first: u64, count: u32, ranges: bool) -> std::io::Result<()> {
    if ranges {
        return writeln!(out, "{first} {count}");
    }
    for id in first..first.saturating_add(u64::from(count)) {
        writeln!(out, "{id}")?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pipeline(unasked: u64) -> Pipeline {
        Pipeline {
            in_flight: VecDeque::new(),
            unasked,
            next_request_id: 0,
            max_lease: 4096,
        }
    }

    #[test]
    fn requests_are_split_at_max_lease_and_bounded_in_flight() {
        let mut p = pipeline(4096 * 20 + 5);
        let mut buf = bytes::BytesMut::new();
        p.fill(&mut buf);
        assert_eq!(p.in_flight.len(), MAX_IN_FLIGHT);
        assert!(p.in_flight.iter().all(|&(_, n)| n == 4096));
        assert_eq!(buf.len(), MAX_IN_FLIGHT * 13);
        assert_eq!(p.unasked, 4096 * (20 - MAX_IN_FLIGHT as u64) + 5);
    }

    #[test]
    fn a_partial_reply_returns_the_shortfall_to_the_pool() {
        let mut p = pipeline(10);
        p.fill(&mut bytes::BytesMut::new());
        assert_eq!(p.unasked, 0);
        p.accept(1, 4).unwrap();
        assert_eq!(p.unasked, 6);
    }

    #[test]
    fn replies_out_of_order_or_oversized_are_refused() {
        let mut p = pipeline(8192);
        p.fill(&mut bytes::BytesMut::new());
        assert!(p.accept(2, 1).is_err());
        let mut p = pipeline(5);
        p.fill(&mut bytes::BytesMut::new());
        assert!(p.accept(1, 6).is_err());
    }

    #[test]
    fn blocks_print_as_ids_or_ranges() {
        let mut out = Vec::new();
        print_block(&mut out, 10, 3, false).unwrap();
        print_block(&mut out, 20, 2, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "10\n11\n12\n20 2\n");
    }
}
