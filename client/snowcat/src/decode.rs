//! `snowcat decode`: IDs (from the arguments, or stdin when none are given) go through
//! [`Layout::decompose`] and come out as time, worker and sequence. The layout comes from the
//! flags (default 41/10/12 from 2024-01-01) or, with `--ask`, from a server's WELCOME.

use std::io::{BufRead, Write};

use clap::Args;

use snowlease::layout::{format_unix_ms, parse_epoch, DEFAULT_EPOCH_UNIX_MS};
use snowlease::{Layout, Parts};

use crate::common::{Common, Failure};
use crate::conn;

/// Arguments of `snowcat decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// IDs to decode, decimal or 0x-prefixed hex. None: read whitespace-separated IDs from stdin.
    ids: Vec<String>,
    /// Print a JSON array instead of one line per ID.
    #[arg(long)]
    json: bool,
    /// Ask the server at --addr for its layout (HELLO/WELCOME) instead of using the flags.
    #[arg(long, conflicts_with_all = ["epoch", "timestamp_bits", "worker_bits", "sequence_bits"])]
    ask: bool,
    /// Epoch of the timestamp field: RFC 3339 or Unix milliseconds.
    #[arg(long, value_parser = parse_epoch_arg)]
    epoch: Option<u64>,
    /// Width of the timestamp field.
    #[arg(long)]
    timestamp_bits: Option<u8>,
    /// Width of the worker field.
    #[arg(long)]
    worker_bits: Option<u8>,
    /// Width of the sequence field.
    #[arg(long)]
    sequence_bits: Option<u8>,
}

fn parse_epoch_arg(text: &str) -> Result<u64, String> {
    parse_epoch(text)
}

impl DecodeArgs {
    /// The layout the flags describe; unset flags take the default layout's values.
    fn flag_layout(&self) -> Result<Layout, Failure> {
        let d = Layout::DEFAULT;
        Layout::widths(
            self.epoch.unwrap_or(DEFAULT_EPOCH_UNIX_MS),
            self.timestamp_bits.unwrap_or(d.timestamp_bits()),
            self.worker_bits.unwrap_or(d.worker_bits()),
            self.sequence_bits.unwrap_or(d.sequence_bits()),
        )
        .map_err(|e| Failure::Usage(format!("invalid layout: {e}")))
    }
}

/// Runs `snowcat decode`.
pub async fn run(common: &Common, args: &DecodeArgs) -> Result<(), Failure> {
    let layout = if args.ask {
        ask_layout(common).await?
    } else {
        args.flag_layout()?
    };
    let words = if args.ids.is_empty() {
        read_stdin_words()?
    } else {
        args.ids.clone()
    };
    if words.is_empty() {
        return Err(Failure::Usage(
            "no IDs given (as arguments or on stdin)".into(),
        ));
    }
    let mut bad = 0usize;
    let mut decoded = Vec::with_capacity(words.len());
    for word in &words {
        match parse_id(word) {
            Ok(id) => decoded.push((id, layout.decompose(id))),
            Err(message) => {
                eprintln!("snowcat: {message}");
                bad += 1;
            }
        }
    }
    let text = if args.json {
        json(&decoded)
    } else {
        lines(&decoded)
    };
    let mut out = std::io::stdout().lock();
    if !text.is_empty() {
        writeln!(out, "{text}").map_err(Failure::stdout)?;
    }
    if bad > 0 {
        return Err(Failure::Failed(format!(
            "{bad} of {} IDs could not be decoded",
            words.len()
        )));
    }
    Ok(())
}

async fn ask_layout(common: &Common) -> Result<Layout, Failure> {
    let timeout = common.timeout();
    let (mut reader, mut writer) = conn::connect(common, timeout).await?;
    let welcome =
        conn::handshake(&mut reader, &mut writer, common.token.as_deref(), timeout).await?;
    welcome.layout().map_err(|_| {
        Failure::Failed(format!(
            "the server announced an invalid layout {}/{}/{}",
            welcome.timestamp_bits, welcome.worker_bits, welcome.sequence_bits
        ))
    })
}

fn read_stdin_words() -> Result<Vec<String>, Failure> {
    let mut words = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Failure::Failed(format!("cannot read stdin: {e}")))?;
        words.extend(line.split_whitespace().map(str::to_owned));
    }
    Ok(words)
}

/// Parses an ID: decimal or `0x` hex, and below 2^63 (the top bit of an ID is always 0).
fn parse_id(word: &str) -> Result<u64, String> {
    let parsed = match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => word.parse::<u64>(),
    };
    let id = parsed.map_err(|e| format!("{word:?} is not an ID (decimal or 0x hex): {e}"))?;
    if id >> 63 != 0 {
        return Err(format!(
            "{word:?} is not an ID: it is above 2^63-1 (the top bit of an ID is always 0)"
        ));
    }
    Ok(id)
}

fn lines(decoded: &[(u64, Parts)]) -> String {
    decoded
        .iter()
        .map(|(id, p)| {
            format!(
                "{id} {} worker {} sequence {}",
                format_unix_ms(p.unix_ms),
                p.worker,
                p.sequence
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn json(decoded: &[(u64, Parts)]) -> String {
    let items: Vec<_> = decoded
        .iter()
        .map(|(id, p)| {
            serde_json::json!({
                "id": id,
                "id_str": id.to_string(),
                "time": format_unix_ms(p.unix_ms),
                "unix_ms": p.unix_ms,
                "tick": p.tick,
                "worker": p.worker,
                "sequence": p.sequence,
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_decimal_or_hex_below_the_sign_bit() {
        assert_eq!(parse_id("42"), Ok(42));
        assert_eq!(parse_id("0x2a"), Ok(42));
        assert!(parse_id("abc").unwrap_err().contains("not an ID"));
        assert!(parse_id("-1").is_err());
        assert!(parse_id("9223372036854775808")
            .unwrap_err()
            .contains("top bit"));
    }

    #[test]
    fn decoded_lines_read_time_worker_sequence() {
        let id = Layout::DEFAULT.compose(1, 7, 42);
        let text = lines(&[(id, Layout::DEFAULT.decompose(id))]);
        assert_eq!(
            text,
            format!("{id} 2024-01-01T00:00:00.001Z worker 7 sequence 42")
        );
    }

    #[test]
    fn decoded_json_carries_every_field() {
        let id = Layout::DEFAULT.compose(5, 1, 2);
        let v: serde_json::Value =
            serde_json::from_str(&json(&[(id, Layout::DEFAULT.decompose(id))])).unwrap();
        assert_eq!(v[0]["worker"], 1);
        assert_eq!(v[0]["sequence"], 2);
        assert_eq!(v[0]["tick"], 5);
        assert_eq!(v[0]["id_str"], id.to_string());
    }
}
