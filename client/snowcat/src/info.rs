//! `snowcat info` and `snowcat ping`: one HELLO/WELCOME exchange printed as a table or JSON,
//! and a series of PING/PONG round trips timed from just before the write to just after the
//! reply is decoded.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use snowlease::layout::{format_unix_ms, unix_ms_now};
use snowlease::wire::{Request, Response, Welcome};

use crate::common::{Common, Failure};
use crate::conn;

/// Arguments of `snowcat info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `snowcat ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// How many PINGs to send.
    #[arg(long, short = 'c', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Milliseconds to wait between PINGs.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
}

/// Runs `snowcat info`.
pub async fn run_info(common: &Common, args: &InfoArgs) -> Result<(), Failure> {
    let timeout = common.timeout();
    let (mut reader, mut writer) = conn::connect(common, timeout).await?;
    let sent_at_ms = unix_ms_now();
    let welcome =
        conn::handshake(&mut reader, &mut writer, common.token.as_deref(), timeout).await?;
    let skew_ms = welcome.server_unix_ms as i64 - sent_at_ms as i64;
    let text = if args.json {
        info_json(&common.addr, &welcome, skew_ms)
    } else {
        info_table(&common.addr, &welcome, skew_ms)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(Failure::stdout)
}

fn info_table(addr: &str, w: &Welcome, skew_ms: i64) -> String {
    let eol = w.layout().map_or_else(
        |_| "invalid layout".into(),
        |l| format_unix_ms(l.end_of_life_unix_ms()),
    );
    [
        format!("address       {addr}"),
        format!("version       {}", w.version),
        format!("worker id     {}", w.worker_id),
        format!(
            "layout        {}/{}/{} (timestamp/worker/sequence bits)",
            w.timestamp_bits, w.worker_bits, w.sequence_bits
        ),
        format!(
            "epoch         {} ({} Unix ms)",
            format_unix_ms(w.epoch_unix_ms),
            w.epoch_unix_ms
        ),
        format!("end of life   {eol}"),
        format!("max lease     {}", w.max_lease),
        format!(
            "server time   {} ({skew_ms:+} ms from this host's clock, round trip included)",
            format_unix_ms(w.server_unix_ms)
        ),
    ]
    .join("\n")
}

fn info_json(addr: &str, w: &Welcome, skew_ms: i64) -> String {
    serde_json::json!({
        "address": addr,
        "version": w.version,
        "worker_id": w.worker_id,
        "timestamp_bits": w.timestamp_bits,
        "worker_bits": w.worker_bits,
        "sequence_bits": w.sequence_bits,
        "epoch_unix_ms": w.epoch_unix_ms,
        "epoch": format_unix_ms(w.epoch_unix_ms),
        "max_lease": w.max_lease,
        "server_unix_ms": w.server_unix_ms,
        "server_time": format_unix_ms(w.server_unix_ms),
        "clock_skew_ms": skew_ms,
    })
    .to_string()
}

/// Runs `snowcat ping`. HELLO goes first only when a token is given (a server that requires
/// one refuses anything else first); otherwise the PINGs are the whole conversation.
pub async fn run_ping(common: &Common, args: &PingArgs) -> Result<(), Failure> {
    let timeout = common.timeout();
    let (mut reader, mut writer) = conn::connect(common, timeout).await?;
    if common.token.is_some() {
        conn::handshake(&mut reader, &mut writer, common.token.as_deref(), timeout).await?;
    }
    let mut rtts = Vec::with_capacity(args.count as usize);
    for nonce in 1..=u64::from(args.count) {
        if nonce > 1 && args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        let (ping, awaited) = (Request::Ping { nonce }, format!("PONG {nonce}"));
        let started = Instant::now();
        let deadline = started + timeout;
        let frame =
            conn::round_trip(&mut reader, &mut writer, &ping, deadline, "PING", &awaited).await?;
        let rtt = started.elapsed();
        match frame.response {
            Response::Pong { nonce: echoed } if echoed == nonce => {}
            other => {
                return Err(Failure::Failed(format!(
                    "expected PONG nonce={nonce}, got {}",
                    crate::format::response_line(&other, &snowlease::Layout::DEFAULT)
                )))
            }
        }
        rtts.push(rtt);
        let mut out = std::io::stdout().lock();
        writeln!(out, "PONG nonce={nonce} rtt={}", millis(rtt))
            .and_then(|()| out.flush())
            .map_err(Failure::stdout)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", summary(&rtts)).map_err(Failure::stdout)
}

fn millis(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn summary(rtts: &[Duration]) -> String {
    let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) else {
        return "no PONG received".into();
    };
    let total: Duration = rtts.iter().sum();
    let avg = total / rtts.len() as u32;
    format!(
        "{} PONGs, rtt min/avg/max = {}/{}/{}",
        rtts.len(),
        millis(*min),
        millis(avg),
        millis(*max)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn welcome() -> Welcome {
        Welcome::announcing(1, 3, &snowlease::Layout::DEFAULT, 1_704_067_201_000)
    }

    #[test]
    fn the_info_table_names_every_welcome_field() {
        let text = info_table("h:1", &welcome(), -2);
        for needle in [
            "worker id     3",
            "41/10/12",
            "2024-01-01T00:00:00.000Z",
            "max lease     4096",
            "2024-01-01T00:00:01.000Z (-2 ms",
            "version       1",
            "2093-09-06",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn info_json_parses_with_numeric_fields() {
        let v: serde_json::Value = serde_json::from_str(&info_json("h:1", &welcome(), 5)).unwrap();
        assert_eq!(v["worker_id"], 3);
        assert_eq!(v["max_lease"], 4096);
        assert_eq!(v["epoch"], "2024-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_ping_summary_shows_min_avg_max() {
        let s = summary(&[Duration::from_micros(100), Duration::from_micros(300)]);
        assert_eq!(s, "2 PONGs, rtt min/avg/max = 0.100 ms/0.200 ms/0.300 ms");
    }
}
