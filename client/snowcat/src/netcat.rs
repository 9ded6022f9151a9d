//! The stdin mode: lines in, frames out, replies back as lines.
//!
//! A thread reads stdin lines into a channel (a blocking read must not hold up the runtime
//! when the server hangs up first). Each line is parsed by [`parse_line`] into a frame, which
//! is written to the socket and appended to a mirror of everything sent; decoding that mirror
//! the way the server will tells how many replies to expect, even for `raw` bytes that hold
//! several frames, half a frame, or garbage (one MALFORMED error, then the server closes).
//! Replies are printed as they arrive. At EOF the loop waits for the expected replies, each
//! wait bounded by the timeout, then exits with 1 if anything went wrong along the way.

use std::io::Write;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use snowlease::wire::{self, Request, Response};
use snowlease::Layout;

use crate::common::{Common, Failure};
use crate::conn::{self, hex, Frame, FrameReader, FrameWriter, ReadError};

/// What one input line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Blank or a comment.
    Skip,
    /// A frame to send.
    Send(Bytes),
}

/// Counters for request ids and nonces the user left out.
#[derive(Debug, Default)]
pub struct AutoIds {
    request_id: u32,
    nonce: u64,
}

/// Parses one input line. Errors are messages for the user; the caller goes on with the next
/// line.
pub fn parse_line(line: &str, auto: &mut AutoIds) -> Result<Line, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Skip);
    }
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default().to_ascii_lowercase();
    let args: Vec<&str> = words.collect();
    let request = match command.as_str() {
        "lease" => parse_lease(&args, auto)?,
        "bulk" => match parse_lease(&args, auto)? {
            Request::Lease { request_id, count } => Request::BulkLease { request_id, count },
            other => other,
        },
        "ping" => parse_ping(&args, auto)?,
        "hello" => parse_hello(&args)?,
        "raw" => return parse_raw(&args).map(Line::Send),
        other => {
            return Err(format!(
                "unknown command {other:?}; expected lease, bulk, ping, hello, raw or # comment"
            ))
        }
    };
    Ok(Line::Send(request.to_bytes().freeze()))
}

fn parse_lease(args: &[&str], auto: &mut AutoIds) -> Result<Request, String> {
    let (count, request_id) = match args {
        [count] => (*count, None),
        [count, id] => (*count, Some(*id)),
        _ => return Err("usage: lease COUNT [id=REQUEST_ID]".into()),
    };
    let count = count
        .parse::<u32>()
        .map_err(|e| format!("lease count {count:?} is not a number 0..=4294967295: {e}"))?;
    let request_id = match request_id {
        None => {
            auto.request_id = auto.request_id.wrapping_add(1);
            auto.request_id
        }
        Some(word) => {
            let value = word
                .strip_prefix("id=")
                .ok_or_else(|| format!("expected id=REQUEST_ID after the count, got {word:?}"))?;
            value
                .parse::<u32>()
                .map_err(|e| format!("request id {value:?} is not a u32: {e}"))?
        }
    };
    Ok(Request::Lease { request_id, count })
}

fn parse_ping(args: &[&str], auto: &mut AutoIds) -> Result<Request, String> {
    let nonce = match args {
        [] => {
            auto.nonce = auto.nonce.wrapping_add(1);
            auto.nonce
        }
        [nonce] => nonce
            .parse::<u64>()
            .map_err(|e| format!("ping nonce {nonce:?} is not a u64: {e}"))?,
        _ => return Err("usage: ping [NONCE]".into()),
    };
    Ok(Request::Ping { nonce })
}

fn parse_hello(args: &[&str]) -> Result<Request, String> {
    let (version, token) = match args {
        [] => (wire::VERSION, ""),
        [version] => (parse_version(version)?, ""),
        [version, token] => (parse_version(version)?, *token),
        _ => return Err("usage: hello [VERSION] [TOKEN]".into()),
    };
    if token.len() > wire::MAX_TOKEN_LEN {
        return Err(format!(
            "token is {} bytes; the limit is {}",
            token.len(),
            wire::MAX_TOKEN_LEN
        ));
    }
    Ok(Request::Hello {
        version,
        token: Bytes::copy_from_slice(token.as_bytes()),
    })
}

fn parse_version(word: &str) -> Result<u16, String> {
    word.parse::<u16>()
        .map_err(|e| format!("hello version {word:?} is not a u16: {e}"))
}

fn parse_raw(args: &[&str]) -> Result<Bytes, String> {
    let digits: String = args.concat();
    if digits.is_empty() {
        return Err("usage: raw HEX (spaces allowed between bytes)".into());
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!(
            "raw hex has an odd number of digits ({})",
            digits.len()
        ));
    }
    let mut bytes = Vec::with_capacity(digits.len() / 2);
    for pair in digits.as_bytes().chunks(2) {
        let text = std::str::from_utf8(pair).map_err(|_| "raw hex is not ASCII".to_string())?;
        let byte = u8::from_str_radix(text, 16)
            .map_err(|_| format!("raw hex contains {text:?}, which is not a hex byte"))?;
        bytes.push(byte);
    }
    Ok(Bytes::from(bytes))
}

/// Tracks what the server has been sent, so the number of replies owed is known.
#[derive(Debug, Default)]
struct Mirror {
    sent: BytesMut,
    owed: usize,
    /// The server has been sent a corrupt stream: it answers MALFORMED once and closes.
    corrupt: bool,
}

impl Mirror {
    /// Records bytes sent and counts the replies they call for.
    fn record(&mut self, bytes: &[u8]) {
        if self.corrupt {
            return;
        }
        self.sent.extend_from_slice(bytes);
        loop {
            match wire::decode_request(&mut self.sent) {
                Ok(Some(_)) => self.owed += 1,
                Ok(None) => break,
                Err(_) => {
                    self.owed += 1;
                    self.corrupt = true;
                    self.sent.clear();
                    break;
                }
            }
        }
    }

    fn answered(&mut self) {
        self.owed = self.owed.saturating_sub(1);
    }
}

/// Everything that went wrong, for the summary and the exit code.
#[derive(Debug, Default)]
struct Tally {
    server_errors: usize,
    bad_lines: usize,
    connection: Option<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.server_errors + self.bad_lines + usize::from(self.connection.is_some())
    }
}

/// The state of one stdin session.
struct Session {
    layout: Layout,
    mirror: Mirror,
    tally: Tally,
    hex: bool,
}

impl Session {
    fn print_reply(&mut self, frame: &Frame) -> Result<(), Failure> {
        match &frame.response {
            Response::Welcome(w) | Response::WelcomeV2 { welcome: w, .. } => {
                if let Ok(layout) = w.layout() {
                    self.layout = layout;
                }
            }
            Response::Error { .. } => self.tally.server_errors += 1,
            _ => {}
        }
        if !matches!(frame.response, Response::GoAway { .. }) {
            self.mirror.answered();
        }
        let mut out = std::io::stdout().lock();
        if self.hex {
            writeln!(out, "< {}", hex(&frame.bytes)).map_err(Failure::stdout)?;
        }
        let line = crate::format::response_line(&frame.response, &self.layout);
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(Failure::stdout)
    }

    async fn send(
        &mut self,
        bytes: &Bytes,
        writer: &mut FrameWriter,
        timeout: std::time::Duration,
    ) -> Result<(), Failure> {
        if self.hex {
            let mut out = std::io::stdout().lock();
            writeln!(out, "> {}", hex(bytes))
                .and_then(|()| out.flush())
                .map_err(Failure::stdout)?;
        }
        self.mirror.record(bytes);
        writer
            .send(bytes, Instant::now() + timeout)
            .await
            .map_err(|e| Failure::Failed(format!("sending failed: {e}")))
    }
}

/// Runs the stdin mode.
pub async fn run(common: &Common, hex: bool) -> Result<(), Failure> {
    let timeout = common.timeout();
    let (mut reader, mut writer) = conn::connect(common, timeout).await?;
    let mut lines = spawn_stdin_reader();
    let mut session = Session {
        layout: Layout::DEFAULT,
        mirror: Mirror::default(),
        tally: Tally::default(),
        hex,
    };
    if let Some(token) = &common.token {
        // The same frame `hello 1 TOKEN` would send, so a token-guarded server accepts the rest.
        let hello = Request::Hello {
            version: wire::VERSION,
            token: Bytes::copy_from_slice(token.as_bytes()),
        };
        session
            .send(&hello.to_bytes().freeze(), &mut writer, timeout)
            .await?;
    }
    pump(&mut session, &mut lines, &mut reader, &mut writer, timeout).await?;
    if session.tally.total() == 0 {
        return Ok(());
    }
    let t = &session.tally;
    let mut parts = Vec::new();
    if t.server_errors > 0 {
        parts.push(format!("{} server ERROR", t.server_errors));
    }
    if t.bad_lines > 0 {
        parts.push(format!("{} bad input line", t.bad_lines));
    }
    if let Some(reason) = &t.connection {
        parts.push(reason.clone());
    }
    eprintln!("snowcat: {} error(s): {}", t.total(), parts.join(", "));
    Err(Failure::Reported)
}

async fn pump(
    session: &mut Session,
    lines: &mut mpsc::Receiver<std::io::Result<String>>,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    timeout: std::time::Duration,
) -> Result<(), Failure> {
    let mut auto = AutoIds::default();
    let mut stdin_open = true;
    let mut line_no = 0usize;
    let mut last_progress = Instant::now();
    // While stdin is open the user may be typing: replies are awaited without a deadline.
    let far = Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
    while stdin_open || session.mirror.owed > 0 {
        let deadline = if stdin_open {
            far
        } else {
            last_progress + timeout
        };
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(Ok(line)) => {
                    line_no += 1;
                    match parse_line(&line, &mut auto) {
                        Ok(Line::Skip) => {}
                        Ok(Line::Send(bytes)) => {
                            if let Err(e) = session.send(&bytes, writer, timeout).await {
                                if let Failure::Failed(reason) = e {
                                    session.tally.connection = Some(reason);
                                    return Ok(());
                                }
                                return Err(e);
                            }
                        }
                        Err(message) => {
                            session.tally.bad_lines += 1;
                            eprintln!("snowcat: line {line_no}: {message}");
                        }
                    }
                }
                Some(Err(e)) => {
                    session.tally.bad_lines += 1;
                    eprintln!("snowcat: cannot read stdin: {e}");
                    stdin_open = false;
                    last_progress = Instant::now();
                }
                None => {
                    stdin_open = false;
                    last_progress = Instant::now();
                }
            },
            frame = reader.next_frame(deadline) => match frame {
                Ok(frame) => {
                    session.print_reply(&frame)?;
                    last_progress = Instant::now();
                }
                Err(e) => {
                    let owed = session.mirror.owed;
                    session.tally.connection = Some(match e {
                        ReadError::TimedOut => format!("timed out waiting for {owed} reply(ies)"),
                        other => format!("{other} ({owed} reply(ies) outstanding)"),
                    });
                    eprintln!("snowcat: {}", session.tally.connection.as_deref().unwrap_or_default());
                    return Ok(());
                }
            },
        }
    }
    Ok(())
}

/// Reads stdin on a plain thread; the thread ends at EOF or when the receiver is gone, and
/// the process exit reaps it if it is still blocked in a read.
fn spawn_stdin_reader() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        // Bounded by the input: each iteration consumes one line, and EOF ends it.
        for line in std::io::BufRead::lines(stdin.lock()) {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Line, String> {
        parse_line(line, &mut AutoIds::default())
    }

    fn frame(request: Request) -> Line {
        Line::Send(request.to_bytes().freeze())
    }

    #[test]
    fn lease_lines_take_an_optional_request_id() {
        let mut auto = AutoIds::default();
        assert_eq!(
            parse_line("lease 5", &mut auto),
            Ok(frame(Request::Lease {
                request_id: 1,
                count: 5
            }))
        );
        assert_eq!(
            parse_line("LEASE 5 id=9", &mut auto),
            Ok(frame(Request::Lease {
                request_id: 9,
                count: 5
            }))
        );
        assert_eq!(
            parse_line("lease 0", &mut auto),
            Ok(frame(Request::Lease {
                request_id: 2,
                count: 0
            }))
        );
    }

    #[test]
    fn bad_lines_explain_themselves() {
        assert!(parse("lease abc")
            .unwrap_err()
            .contains("\"abc\" is not a number"));
        assert!(parse("lease 5 9").unwrap_err().contains("id="));
        assert!(parse("raw zz").unwrap_err().contains("\"zz\""));
        assert!(parse("raw 123").unwrap_err().contains("odd"));
        assert!(parse("fetch 3").unwrap_err().contains("unknown command"));
        assert!(parse("ping x").unwrap_err().contains("nonce"));
        assert!(parse("hello 1 a b").unwrap_err().contains("usage"));
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        assert_eq!(parse("  "), Ok(Line::Skip));
        assert_eq!(parse("# lease 5"), Ok(Line::Skip));
    }

    #[test]
    fn hello_and_ping_have_defaults() {
        assert_eq!(
            parse("hello"),
            Ok(frame(Request::Hello {
                version: wire::VERSION,
                token: Bytes::new()
            }))
        );
        assert_eq!(
            parse("hello 2 s3cret"),
            Ok(frame(Request::Hello {
                version: 2,
                token: Bytes::from_static(b"s3cret")
            }))
        );
        assert_eq!(parse("ping"), Ok(frame(Request::Ping { nonce: 1 })));
        assert_eq!(parse("ping 7"), Ok(frame(Request::Ping { nonce: 7 })));
    }

    #[test]
    fn raw_hex_may_be_spaced() {
        assert_eq!(
            parse("raw 00000009 02 00000001 00000005"),
            Ok(frame(Request::Lease {
                request_id: 1,
                count: 5
            }))
        );
    }

    #[test]
    fn the_mirror_counts_replies_owed_for_whole_split_and_corrupt_frames() {
        let mut m = Mirror::default();
        let ping = Request::Ping { nonce: 1 }.to_bytes();
        let mut two = ping.clone();
        two.extend_from_slice(&ping);
        m.record(&two);
        assert_eq!(m.owed, 2);
        m.record(&ping[..5]);
        assert_eq!(m.owed, 2);
        m.record(&ping[5..]);
        assert_eq!(m.owed, 3);
        m.record(&[0, 0, 0, 5, 2, 0, 0, 0, 1]);
        assert_eq!(m.owed, 4);
        assert!(m.corrupt);
        m.record(&ping);
        assert_eq!(m.owed, 4, "a closing server answers nothing more");
    }
}
