//! protocol.md checked against the code, so the document cannot drift from it.
//!
//! The document is read once ([`doc`]). [`dumps`] pulls every `hex:` block out of its fenced
//! code blocks and splits it into fields: the bytes of each line and the `name = value`
//! annotation beside them. Each field's bytes are checked against its decoded value, the whole
//! frame is rebuilt from the decoded values with `snowlease::wire` and compared byte for byte,
//! and the documented bytes are decoded back. The opcode, error code, GOAWAY and limits tables
//! are parsed the same way ([`table`]) and compared with the constants. Last, a server on
//! 127.0.0.1:0 is provoked into every error whose message is fixed, and what it sends is
//! compared with the documented dump.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::{CommandFactory, Parser};
use snowlease::layout::format_unix_ms;
use snowlease::wire::{
    self, goaway, opcode, ErrorCode, Request, Response, Run, Welcome, WireError, WorkerSet,
    MAX_BULK, MAX_ERROR_MESSAGE, MAX_FRAME_LEN, MAX_RUNS, MAX_TOKEN_LEN,
};
use snowlease::Layout;
use snowlease_server::config::{self, Args};
use snowlease_server::{conn, start, ServerConfig};

/// Bounds every socket operation; each exchange here takes microseconds.
const IO_LIMIT: Duration = Duration::from_secs(10);

/// Every opcode (versions 1 and 2) with its name, in the order of the opcode table.
const OPCODES: [(u8, &str); 10] = [
    (opcode::HELLO, "HELLO"),
    (opcode::LEASE, "LEASE"),
    (opcode::PING, "PING"),
    (opcode::BULK_LEASE, "BULK_LEASE"),
    (opcode::WELCOME, "WELCOME"),
    (opcode::LEASED, "LEASED"),
    (opcode::PONG, "PONG"),
    (opcode::BULK_LEASED, "BULK_LEASED"),
    (opcode::GOAWAY, "GOAWAY"),
    (opcode::ERROR, "ERROR"),
];

/// Every GOAWAY reason of version 1.
const REASONS: [u16; 3] = [
    goaway::SHUTDOWN,
    goaway::IDLE_TIMEOUT,
    goaway::WRITE_TIMEOUT,
];

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A decoded value as the document writes it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(u64),
    Text(String),
}

/// One annotated field of a dump: its bytes and what the document says they mean.
#[derive(Debug)]
struct Field {
    name: String,
    value: Value,
    /// The human reading in parentheses after the value, without them; may be empty.
    comment: String,
    bytes: Vec<u8>,
}

/// One `hex:` block.
#[derive(Debug)]
struct Dump {
    title: String,
    /// 1-based line of the `hex:` marker, for failure messages.
    line: usize,
    fields: Vec<Field>,
}

impl Dump {
    /// The frame name: the title's first word.
    fn frame(&self) -> &str {
        self.title.split_whitespace().next().unwrap_or("")
    }

    fn bytes(&self) -> Vec<u8> {
        self.fields.iter().flat_map(|f| f.bytes.clone()).collect()
    }

    fn field(&self, name: &str) -> &Field {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{self}: no field {name}"))
    }

    /// An integer field, converted to the type the codec uses.
    fn int<T: TryFrom<u64>>(&self, name: &str) -> T {
        match &self.field(name).value {
            Value::Int(v) => T::try_from(*v)
                .unwrap_or_else(|_| panic!("{self}: {name} = {v} does not fit its type")),
            Value::Text(t) => panic!("{self}: {name} is text {t:?}, expected a number"),
        }
    }

    fn text(&self, name: &str) -> String {
        match &self.field(name).value {
            Value::Text(t) => t.clone(),
            Value::Int(v) => panic!("{self}: {name} is the number {v}, expected text"),
        }
    }
}

impl std::fmt::Display for Dump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "protocol.md line {} (hex: {})", self.line, self.title)
    }
}

fn is_hex_byte(token: &str) -> bool {
    token.len() == 2 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits a dump line into its leading hex bytes and the annotation after them.
fn split_line(line: &str) -> (Vec<u8>, &str) {
    let mut bytes = Vec::new();
    let mut rest = line.trim_start();
    loop {
        let token = rest.split_whitespace().next().unwrap_or("");
        if !is_hex_byte(token) {
            return (bytes, rest.trim());
        }
        bytes.push(u8::from_str_radix(token, 16).unwrap());
        rest = rest[2..].trim_start();
    }
}

/// Parses `name = value (comment)`, where value is a decimal or `0x` number or a quoted string.
fn parse_annotation(text: &str) -> Result<(String, Value, String), String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("expected `name = value`, got {text:?}"))?;
    let rest = rest.trim();
    let (value, comment) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted
            .rfind('"')
            .ok_or_else(|| format!("unterminated string in {text:?}"))?;
        (Value::Text(quoted[..end].to_owned()), &quoted[end + 1..])
    } else {
        let (number, comment) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let parsed = match number.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => number.parse(),
        };
        let n = parsed.map_err(|_| format!("{number:?} is not a number in {text:?}"))?;
        (Value::Int(n), comment)
    };
    let comment = comment.trim();
    let comment = comment
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or(comment);
    Ok((name.trim().to_owned(), value, comment.to_owned()))
}

/// Every `hex:` block inside the fenced code blocks of `doc`. A dump ends at a blank line, the
/// next marker or the end of its code block.
fn dumps(doc: &str) -> Vec<Dump> {
    let mut out: Vec<Dump> = Vec::new();
    let mut in_fence = false;
    let mut open = false;
    for (i, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            open = false;
            continue;
        }
        if !in_fence {
            continue;
        }
        if let Some(title) = line.strip_prefix("hex:") {
            out.push(Dump {
                title: title.trim().to_owned(),
                line: i + 1,
                fields: Vec::new(),
            });
            open = true;
            continue;
        }
        if line.trim().is_empty() {
            open = false;
            continue;
        }
        if !open {
            continue;
        }
        let dump = out.last_mut().unwrap();
        let (bytes, annotation) = split_line(line);
        if annotation.is_empty() {
            let last = dump
                .fields
                .last_mut()
                .unwrap_or_else(|| panic!("protocol.md line {}: bytes before any field", i + 1));
            last.bytes.extend(bytes);
        } else {
            let (name, value, comment) = parse_annotation(annotation)
                .unwrap_or_else(|e| panic!("protocol.md line {}: {e}", i + 1));
            dump.fields.push(Field {
                name,
                value,
                comment,
                bytes,
            });
        }
    }
    assert!(!in_fence, "protocol.md ends inside a code block");
    out
}

fn dump<'a>(all: &'a [Dump], title: &str) -> &'a Dump {
    all.iter()
        .find(|d| d.title == title)
        .unwrap_or_else(|| panic!("protocol.md has no dump `hex: {title}`"))
}

/// The fields a dump must annotate, in wire order. BULK_LEASED repeats `first_id, count` once
/// per run; a WELCOME with a worker set is the version-2 one.
fn dump_fields(d: &Dump) -> Vec<&'static str> {
    match d.frame() {
        "BULK_LEASED" => {
            let mut names = vec!["length", "opcode", "request_id", "run_count"];
            for _ in 0..d.int::<usize>("run_count") {
                names.extend(["first_id", "count"]);
            }
            names
        }
        "WELCOME" if d.fields.iter().any(|f| f.name == "first_worker") => {
            let mut names = expected_fields("WELCOME").to_vec();
            names.extend(["first_worker", "worker_count", "max_bulk"]);
            names
        }
        frame => expected_fields(frame).to_vec(),
    }
}

/// The fields each fixed-size frame's dump must annotate, in wire order.
fn expected_fields(frame: &str) -> &'static [&'static str] {
    match frame {
        "BULK_LEASE" => &["length", "opcode", "request_id", "count"],
        "HELLO" => &["length", "opcode", "version", "token_len", "token"],
        "LEASE" => &["length", "opcode", "request_id", "count"],
        "PING" | "PONG" => &["length", "opcode", "nonce"],
        "WELCOME" => &[
            "length",
            "opcode",
            "version",
            "worker_id",
            "epoch_unix_ms",
            "timestamp_bits",
            "worker_bits",
            "sequence_bits",
            "max_lease",
            "server_unix_ms",
        ],
        "LEASED" => &["length", "opcode", "request_id", "first_id", "count"],
        "GOAWAY" => &["length", "opcode", "reason"],
        "ERROR" => &[
            "length",
            "opcode",
            "request_id",
            "code",
            "message_len",
            "message",
        ],
        other => panic!("unknown frame name {other:?}"),
    }
}

/// Bytes an integer field occupies; `None` for the variable-length text fields.
fn width(field: &str) -> Option<usize> {
    Some(match field {
        "opcode" | "token_len" | "timestamp_bits" | "worker_bits" | "sequence_bits" => 1,
        "version" | "worker_id" | "reason" | "code" | "message_len" | "first_worker"
        | "worker_count" | "run_count" => 2,
        "length" | "request_id" | "count" | "max_lease" | "max_bulk" => 4,
        "nonce" | "epoch_unix_ms" | "server_unix_ms" | "first_id" => 8,
        _ => return None,
    })
}

/// Checks one field's bytes against its decoded value and its human reading.
fn check_field(d: &Dump, f: &Field) {
    match (&f.value, width(&f.name)) {
        (Value::Int(v), Some(w)) => {
            assert_eq!(f.bytes.len(), w, "{d}: {} takes {w} bytes", f.name);
            let from_bytes = f
                .bytes
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            assert_eq!(from_bytes, *v, "{d}: {} bytes say {from_bytes}", f.name);
        }
        (Value::Text(t), None) => {
            assert_eq!(
                f.bytes,
                t.as_bytes(),
                "{d}: {} bytes are not its text",
                f.name
            )
        }
        (value, _) => panic!("{d}: {} has the wrong kind of value {value:?}", f.name),
    }
    let Value::Int(v) = f.value else { return };
    let reading = match f.name.as_str() {
        "opcode" => d.frame().to_owned(),
        "code" => ErrorCode(u16::try_from(v).unwrap()).name().to_owned(),
        "reason" => goaway::name(u16::try_from(v).unwrap()).to_owned(),
        "first_id" => Layout::DEFAULT.decompose(v).to_string(),
        "epoch_unix_ms" | "server_unix_ms" => format_unix_ms(v),
        _ => return,
    };
    assert_eq!(f.comment, reading, "{d}: the reading beside {}", f.name);
}

/// A frame in either direction.
#[derive(Debug, PartialEq)]
enum Frame {
    Request(Request),
    Response(Response),
}

/// The frame the dump's decoded fields describe, built with the codec's types.
fn build(d: &Dump) -> Frame {
    match d.frame() {
        "HELLO" => Frame::Request(Request::Hello {
            version: d.int("version"),
            token: Bytes::from(d.text("token").into_bytes()),
        }),
        "LEASE" => Frame::Request(Request::Lease {
            request_id: d.int("request_id"),
            count: d.int("count"),
        }),
        "PING" => Frame::Request(Request::Ping {
            nonce: d.int("nonce"),
        }),
        "BULK_LEASE" => Frame::Request(Request::BulkLease {
            request_id: d.int("request_id"),
            count: d.int("count"),
        }),
        "WELCOME" => {
            let welcome = Welcome {
                version: d.int("version"),
                worker_id: d.int("worker_id"),
                epoch_unix_ms: d.int("epoch_unix_ms"),
                timestamp_bits: d.int("timestamp_bits"),
                worker_bits: d.int("worker_bits"),
                sequence_bits: d.int("sequence_bits"),
                max_lease: d.int("max_lease"),
                server_unix_ms: d.int("server_unix_ms"),
            };
            if d.fields.iter().any(|f| f.name == "first_worker") {
                Frame::Response(Response::WelcomeV2 {
                    welcome,
                    workers: WorkerSet {
                        first_worker: d.int("first_worker"),
                        worker_count: d.int("worker_count"),
                        max_bulk: d.int("max_bulk"),
                    },
                })
            } else {
                Frame::Response(Response::Welcome(welcome))
            }
        }
        "BULK_LEASED" => Frame::Response(Response::BulkLeased {
            request_id: d.int("request_id"),
            runs: runs(d),
        }),
        "LEASED" => Frame::Response(Response::Leased {
            request_id: d.int("request_id"),
            first_id: d.int("first_id"),
            count: d.int("count"),
        }),
        "PONG" => Frame::Response(Response::Pong {
            nonce: d.int("nonce"),
        }),
        "GOAWAY" => Frame::Response(Response::GoAway {
            reason: d.int("reason"),
        }),
        "ERROR" => Frame::Response(Response::Error {
            request_id: d.int("request_id"),
            code: ErrorCode(d.int("code")),
            message: d.text("message"),
        }),
        other => panic!("{d}: unknown frame {other:?}"),
    }
}

/// A BULK_LEASED dump's runs: its `first_id, count` pairs in order.
fn runs(d: &Dump) -> Vec<Run> {
    let int = |f: &Field| match f.value {
        Value::Int(v) => v,
        Value::Text(_) => panic!("{d}: {} is text", f.name),
    };
    d.fields[4..]
        .chunks(2)
        .map(|pair| Run {
            first_id: int(&pair[0]),
            count: u32::try_from(int(&pair[1])).expect("a u32 count"),
        })
        .collect()
}

fn encode(frame: &Frame) -> BytesMut {
    match frame {
        Frame::Request(r) => r.to_bytes(),
        Frame::Response(r) => r.to_bytes(),
    }
}

fn decode(frame: &Frame, bytes: &[u8]) -> Result<Option<Frame>, WireError> {
    let mut buf = BytesMut::from(bytes);
    let decoded = match frame {
        Frame::Request(_) => wire::decode_request(&mut buf)?.map(Frame::Request),
        Frame::Response(_) => wire::decode_response(&mut buf)?.map(Frame::Response),
    };
    assert!(buf.is_empty(), "{} bytes left after one frame", buf.len());
    Ok(decoded)
}

#[test]
fn every_hex_dump_is_exactly_what_the_codec_encodes_and_decodes() {
    let doc = doc();
    let all = dumps(&doc);
    assert!(all.len() >= 18, "only {} dumps found", all.len());
    for d in &all {
        let names: Vec<&str> = d.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, dump_fields(d), "{d}: fields");
        for f in &d.fields {
            check_field(d, f);
        }
        let frame = build(d);
        let documented = d.bytes();
        assert_eq!(
            hex(&encode(&frame)),
            hex(&documented),
            "{d}: the codec encodes {frame:?} differently"
        );
        assert_eq!(
            decode(&frame, &documented),
            Ok(Some(frame)),
            "{d}: decoding the bytes"
        );
    }
}

#[test]
fn every_frame_every_error_code_and_every_goaway_reason_has_a_dump() {
    let doc = doc();
    let all = dumps(&doc);
    let titles: Vec<&str> = all.iter().map(|d| d.title.as_str()).collect();
    let unique: BTreeSet<&str> = titles.iter().copied().collect();
    assert_eq!(
        unique.len(),
        titles.len(),
        "duplicate dump titles: {titles:?}"
    );

    let mut wanted: Vec<String> = [
        "HELLO",
        "HELLO with token",
        "LEASE",
        "PING",
        "WELCOME",
        "LEASED",
        "PONG",
        "WELCOME v2",
        "BULK_LEASE",
        "BULK_LEASED",
    ]
    .map(String::from)
    .to_vec();
    wanted.extend(REASONS.map(|r| format!("GOAWAY {}", goaway::name(r))));
    wanted.extend(ErrorCode::ALL.iter().map(|c| format!("ERROR {}", c.name())));
    for title in &wanted {
        dump(&all, title);
    }
    assert!(dump(&all, "HELLO").text("token").is_empty());
    assert!(!dump(&all, "HELLO with token").text("token").is_empty());
    for d in all.iter().filter(|d| d.frame() == "ERROR") {
        let code = ErrorCode(d.int("code"));
        assert_eq!(d.title, format!("ERROR {}", code.name()), "{d}: title");
    }
    for d in all.iter().filter(|d| d.frame() == "GOAWAY") {
        let reason = goaway::name(d.int("reason"));
        assert_eq!(d.title, format!("GOAWAY {reason}"), "{d}: title");
    }
}

/// The rows of the markdown table whose header line is exactly `header`.
fn table(doc: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != header);
    assert!(
        lines.next().is_some(),
        "protocol.md has no table headed {header}"
    );
    lines
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

#[test]
fn the_error_table_lists_every_code_exactly_as_the_code_defines_it() {
    let rows = table(
        &doc(),
        "| Code | Name | Closes connection | Retryable | Meaning |",
    );
    let expected: Vec<Vec<String>> = ErrorCode::ALL
        .iter()
        .map(|c| {
            vec![
                c.0.to_string(),
                c.name().to_owned(),
                yes_no(c.closes_connection()),
                yes_no(c.is_retryable()),
                c.description().to_owned(),
            ]
        })
        .collect();
    assert_eq!(rows, expected);
}

#[test]
fn the_goaway_and_opcode_tables_match_the_constants() {
    let doc = doc();
    let reasons: Vec<(String, String)> = table(&doc, "| Reason | Name | Meaning |")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let expected: Vec<(String, String)> = REASONS
        .iter()
        .map(|r| (r.to_string(), goaway::name(*r).to_owned()))
        .collect();
    assert_eq!(reasons, expected);

    let rows = table(&doc, "| Opcode | Name | Direction | Body bytes | Meaning |");
    let listed: Vec<(String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let expected: Vec<(String, String)> = OPCODES
        .iter()
        .map(|(op, name)| (format!("0x{op:02X}"), (*name).to_owned()))
        .collect();
    assert_eq!(listed, expected);

    // The body size column starts with the size of the smallest body of each opcode.
    let smallest = [
        Frame::Request(Request::Hello {
            version: 1,
            token: Bytes::new(),
        }),
        Frame::Request(Request::Lease {
            request_id: 0,
            count: 1,
        }),
        Frame::Request(Request::Ping { nonce: 0 }),
        Frame::Request(Request::BulkLease {
            request_id: 0,
            count: 1,
        }),
        Frame::Response(Response::Welcome(Welcome {
            version: 1,
            worker_id: 0,
            epoch_unix_ms: 0,
            timestamp_bits: 41,
            worker_bits: 10,
            sequence_bits: 12,
            max_lease: 4096,
            server_unix_ms: 0,
        })),
        Frame::Response(Response::Leased {
            request_id: 0,
            first_id: 0,
            count: 1,
        }),
        Frame::Response(Response::Pong { nonce: 0 }),
        Frame::Response(Response::BulkLeased {
            request_id: 0,
            runs: vec![Run {
                first_id: 0,
                count: 1,
            }],
        }),
        Frame::Response(Response::GoAway { reason: 0 }),
        Frame::Response(Response::Error {
            request_id: 0,
            code: ErrorCode::INTERNAL,
            message: String::new(),
        }),
    ];
    for (row, frame) in rows.iter().zip(&smallest) {
        let body = encode(frame).len() - wire::LEN_PREFIX - 1;
        let documented = row[3].split_whitespace().next().unwrap_or("");
        assert_eq!(documented, body.to_string(), "body bytes of {}", row[1]);
    }
}

/// The number at the start of a table cell, thousands separators allowed.
fn leading_number(cell: &str) -> u64 {
    let digits: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{cell:?} does not start with a number"))
}

#[test]
fn the_limits_table_matches_the_constants_and_the_server_defaults() {
    let doc = doc();
    let rows = table(&doc, "| Limit | Default | Setting | Notes |");
    let by_name: HashMap<&str, &Vec<String>> = rows.iter().map(|r| (r[0].as_str(), r)).collect();
    let args = Args::try_parse_from(["snowlease-server"]).unwrap();
    let expected: [(&str, u64); 20] = [
        ("Lease port", u64::from(config::DEFAULT_PORT)),
        ("Frame length (opcode + body)", u64::from(MAX_FRAME_LEN)),
        ("HELLO token", MAX_TOKEN_LEN as u64),
        ("ERROR message", MAX_ERROR_MESSAGE as u64),
        (
            "LEASE count (`max_lease`)",
            u64::from(Layout::DEFAULT.max_lease()),
        ),
        ("Open connections", args.max_connections as u64),
        ("Idle timeout", args.idle_timeout_ms),
        ("Write timeout", args.write_timeout_ms),
        ("Replies per flush", args.max_queued_replies as u64),
        ("Drain timeout", args.drain_timeout_ms),
        ("Lead ahead of the clock", args.max_lead_ms),
        ("Reserved window", args.reserve_ms),
        (
            "Open connections per peer",
            args.max_connections_per_peer as u64,
        ),
        ("First frame", args.first_frame_timeout_ms),
        ("BULK_LEASE count (`max_bulk`)", u64::from(MAX_BULK)),
        ("Runs per BULK_LEASED", MAX_RUNS as u64),
        ("Worker ids per process", u64::from(args.workers_per_pod)),
        ("Durability wait", args.durable_timeout_ms),
        (
            "Forward clock step followed at once",
            args.clock_follow_max_ms,
        ),
        ("Forward clock step hold", args.clock_follow_after_ms),
    ];
    for (name, value) in expected {
        let row = by_name
            .get(name)
            .unwrap_or_else(|| panic!("limits table has no row {name:?}"));
        assert_eq!(leading_number(&row[1]), value, "limits table row {name:?}");
    }
    assert_eq!(args.listen.port(), config::DEFAULT_PORT);

    // Every flag the Setting column names exists, with the environment variable beside it.
    let command = Args::command();
    for row in &rows {
        let words: Vec<&str> = row[2].split('`').collect();
        for (i, word) in words.iter().enumerate() {
            let Some(long) = word.strip_prefix("--") else {
                continue;
            };
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("limits table names unknown flag --{long}"));
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(
                env.as_deref(),
                words.get(i + 2).copied(),
                "environment variable of --{long}"
            );
        }
    }
}

#[test]
fn the_prose_quotes_the_codes_own_messages_and_numbers() {
    let doc = doc();
    let quoted = [
        WireError::Empty.to_string(),
        WireError::TooLong(5000).to_string(),
        WireError::UnknownOpcode(0x42).to_string(),
        WireError::BodySize {
            name: "LEASE",
            expected: 8,
            got: 4,
        }
        .to_string(),
    ];
    for text in quoted {
        assert!(
            doc.contains(&format!("`{text}`")),
            "protocol.md lacks `{text}`"
        );
    }
    let l = Layout::DEFAULT;
    let per_second = u64::from(l.max_lease()) * 1000;
    let all_workers_per_ms = u64::from(l.max_lease()) * (u64::from(l.max_worker()) + 1);
    for text in [
        format_unix_ms(l.end_of_life_unix_ms()),
        format_unix_ms(l.epoch_unix_ms()).replace(".000", ""),
        thousands(per_second),
        thousands(all_workers_per_ms),
    ] {
        assert!(doc.contains(&text), "protocol.md lacks {text}");
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_LIMIT).unwrap();
    s.set_read_timeout(Some(IO_LIMIT)).unwrap();
    s.set_write_timeout(Some(IO_LIMIT)).unwrap();
    s
}

/// Reads one whole frame, prefix included.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).unwrap();
    let len = u32::from_be_bytes(prefix);
    assert!(
        (1..=MAX_FRAME_LEN).contains(&len),
        "server sent length {len}"
    );
    let mut frame = prefix.to_vec();
    frame.resize(4 + len as usize, 0);
    s.read_exact(&mut frame[4..]).unwrap();
    frame
}

fn decode_reply(bytes: &[u8]) -> Response {
    wire::decode_response(&mut BytesMut::from(bytes))
        .unwrap()
        .unwrap()
}

/// Decodes a reply that must be an ERROR frame; `refused` says what was to be refused, for the
/// failure message.
fn error_reply(bytes: &[u8], refused: &str) -> (u32, ErrorCode, String) {
    match decode_reply(bytes) {
        Response::Error {
            request_id,
            code,
            message,
        } => (request_id, code, message),
        other => panic!("{refused} was not refused with ERROR: {other:?}"),
    }
}

/// Sends `request` and reads until the server closes.
fn until_closed(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

#[test]
fn documented_error_frames_are_what_a_live_server_sends() {
    let all_dumps = dumps(&doc());
    let documented = |title: &str| dump(&all_dumps, title).bytes();
    let server = start(ServerConfig::for_tests(7)).unwrap();
    let addr = server.lease_addr();

    let got = until_closed(addr, &[0, 0, 0, 1, 0x42]);
    assert_eq!(hex(&got), hex(&documented("ERROR MALFORMED")));

    let hello0 = Request::Hello {
        version: 0,
        token: Bytes::new(),
    }
    .to_bytes();
    let got = until_closed(addr, &hello0);
    assert_eq!(hex(&got), hex(&documented("ERROR UNSUPPORTED_VERSION")));

    // INVALID_COUNT leaves the connection open: the PING behind it is answered.
    let mut s = connect(addr);
    let mut requests = Request::Lease {
        request_id: 7,
        count: 0,
    }
    .to_bytes();
    Request::Ping { nonce: 5 }.encode(&mut requests);
    s.write_all(&requests).unwrap();
    assert_eq!(
        hex(&read_frame(&mut s)),
        hex(&documented("ERROR INVALID_COUNT"))
    );
    assert_eq!(
        decode_reply(&read_frame(&mut s)),
        Response::Pong { nonce: 5 }
    );

    // OVERLOADED comes from the server's own builder, with the default cap.
    let overloaded = conn::overloaded_frame(config::DEFAULT_MAX_CONNECTIONS);
    assert_eq!(hex(&overloaded), hex(&documented("ERROR OVERLOADED")));
    server.abort();
}

#[test]
fn a_live_server_at_its_cap_sends_overloaded_first_and_closes() {
    let mut config = ServerConfig::for_tests(7);
    config.max_connections = 1;
    let server = start(config).unwrap();
    let addr = server.lease_addr();
    // A round trip proves the first connection holds the only permit.
    let mut first = connect(addr);
    first
        .write_all(&Request::Ping { nonce: 1 }.to_bytes())
        .unwrap();
    assert_eq!(
        decode_reply(&read_frame(&mut first)),
        Response::Pong { nonce: 1 }
    );
    let got = until_closed(addr, &[]);
    assert_eq!(hex(&got), hex(&conn::overloaded_frame(1)));
    server.abort();
}

#[test]
fn a_live_server_welcomes_and_leases_as_documented() {
    let all_dumps = dumps(&doc());
    let server = start(ServerConfig::for_tests(7)).unwrap();
    let mut s = connect(server.lease_addr());

    let Frame::Response(Response::Welcome(documented)) = build(dump(&all_dumps, "WELCOME")) else {
        panic!("the WELCOME dump is not a WELCOME");
    };
    // A version-1 client gets the version-1 WELCOME; a client speaking a newer version is
    // answered with the highest both speak, 2, and its worker set.
    let mut requests = dump(&all_dumps, "HELLO").bytes();
    requests.extend(
        Request::Hello {
            version: 3,
            token: Bytes::new(),
        }
        .to_bytes(),
    );
    requests.extend(dump(&all_dumps, "LEASE").bytes());
    s.write_all(&requests).unwrap();
    let Response::Welcome(w) = decode_reply(&read_frame(&mut s)) else {
        panic!("HELLO version 1 was not answered with the version-1 WELCOME");
    };
    assert_eq!(
        w,
        Welcome {
            server_unix_ms: w.server_unix_ms,
            ..documented
        }
    );
    let Response::WelcomeV2 { welcome, workers } = decode_reply(&read_frame(&mut s)) else {
        panic!("HELLO version 3 was not answered with the version-2 WELCOME");
    };
    assert_eq!(
        welcome,
        Welcome {
            version: 2,
            server_unix_ms: welcome.server_unix_ms,
            ..documented
        }
    );
    assert_eq!(
        workers,
        WorkerSet {
            first_worker: 7,
            worker_count: 1,
            max_bulk: MAX_BULK
        }
    );
    let Response::Leased {
        request_id,
        first_id,
        count,
    } = decode_reply(&read_frame(&mut s))
    else {
        panic!("LEASE was not answered with LEASED");
    };
    assert_eq!(request_id, 7);
    assert!((1..=4096).contains(&count), "count {count}");
    let parts = Layout::DEFAULT.decompose(first_id);
    assert_eq!(parts.worker, 7);
    assert!(parts.sequence + count <= Layout::DEFAULT.max_lease());
    server.abort();
}

#[test]
fn an_exhausted_layout_answers_unavailable_with_the_documented_message() {
    // A 30-bit timestamp from the Unix epoch ran out in January 1970.
    let layout = Layout::widths(0, 30, 10, 23).unwrap();
    let mut config = ServerConfig::for_tests(7);
    config.layout = layout;
    config.min_years_left = f64::NEG_INFINITY;
    let server = start(config).unwrap();
    let mut s = connect(server.lease_addr());
    let mut requests = Request::Lease {
        request_id: 7,
        count: 1,
    }
    .to_bytes();
    Request::Ping { nonce: 9 }.encode(&mut requests);
    s.write_all(&requests).unwrap();
    let (request_id, code, message) =
        error_reply(&read_frame(&mut s), "a lease from an exhausted layout");
    assert_eq!(
        decode_reply(&read_frame(&mut s)),
        Response::Pong { nonce: 9 }
    );
    server.abort();

    let all_dumps = dumps(&doc());
    let documented = dump(&all_dumps, "ERROR UNAVAILABLE");
    assert_eq!(request_id, documented.int::<u32>("request_id"));
    assert_eq!(code, ErrorCode::UNAVAILABLE);
    // The document shows the default layout's end of life; this server's is 1970.
    let ours = format_unix_ms(layout.end_of_life_unix_ms());
    let default = format_unix_ms(Layout::DEFAULT.end_of_life_unix_ms());
    assert_eq!(message.replace(&ours, &default), documented.text("message"));
}

#[test]
fn a_live_server_answers_bulk_leases_as_documented() {
    let mut config = ServerConfig::for_tests(64);
    config.worker_count = 2;
    let server = start(config).unwrap();
    let mut s = connect(server.lease_addr());
    let all_dumps = dumps(&doc());
    // Version 1 does not know BULK_LEASE: MALFORMED, then the connection closes.
    let got = until_closed(server.lease_addr(), &dump(&all_dumps, "BULK_LEASE").bytes());
    let (_, code, _) = error_reply(&got, "BULK_LEASE on a version-1 connection");
    assert_eq!(code, ErrorCode::MALFORMED);

    let mut requests = Request::Hello {
        version: 2,
        token: Bytes::new(),
    }
    .to_bytes();
    requests.extend(dump(&all_dumps, "BULK_LEASE").bytes());
    Request::BulkLease {
        request_id: 9,
        count: 0,
    }
    .encode(&mut requests);
    s.write_all(&requests).unwrap();
    let Response::WelcomeV2 { workers, .. } = decode_reply(&read_frame(&mut s)) else {
        panic!("no version-2 WELCOME");
    };
    assert_eq!((workers.first_worker, workers.worker_count), (64, 2));
    let Response::BulkLeased { request_id, runs } = decode_reply(&read_frame(&mut s)) else {
        panic!("BULK_LEASE was not answered with BULK_LEASED");
    };
    assert_eq!(request_id, 8);
    let layout = Layout::DEFAULT;
    let total: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
    assert!((1..=1_048_576).contains(&total), "{total} IDs");
    for r in &runs {
        assert!(
            workers.contains(layout.decompose(r.first_id).worker),
            "{r:?}"
        );
        assert!(layout.run_fits(r.first_id, r.count));
        for (id, n) in layout.blocks(r.first_id, r.count) {
            assert!(layout.decompose(id).sequence + n <= layout.max_lease());
        }
    }
    let (request_id, code, message) = error_reply(&read_frame(&mut s), "a bulk count of 0");
    assert_eq!((request_id, code), (9, ErrorCode::INVALID_COUNT));
    assert_eq!(message, "bulk lease count 0 is outside 1..=4194304");
    server.abort();
}
