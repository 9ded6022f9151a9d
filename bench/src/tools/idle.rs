//! `snowlease-bench idle-conns --addr LEASE --admin ADMIN --pid PID [--connections N]`: what
//! N idle, welcomed connections cost the server.
//!
//! Waits `--settle-ms` so start-up allocations are done (this measures "idle", not "just
//! started"), reads the server's resident memory, opens N connections and sends HELLO on
//! each, reads every WELCOME, waits (bounded) until the server's
//! `snowlease_connections_open` gauge shows them all, waits `--settle-ms` again with nothing
//! sent, reads the memory again, and closes them. Output: `{"rss_idle_kib",
//! "rss_conns_kib","connections","welcomed","open_metric","open_seconds","threads",
//! "sources"}`.
//!
//! Connections are spread over source addresses 127.0.0.1, 127.0.0.2, ... (`--per-source`
//! each, default 1,000) so a server with a per-peer connection cap (1,024 by default from
//! the version after 0.1) serves them all; a server on another address gets them from the
//! default source.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use snowlease::wire::{self, Request, Response};
use snowlease_testkit::{http, procfs};

/// Arguments of `idle-conns`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's lease port.
    #[arg(long)]
    addr: SocketAddr,
    /// The server's admin port (for the open-connections gauge).
    #[arg(long)]
    admin: SocketAddr,
    /// The server's process id (for its memory).
    #[arg(long)]
    pid: u32,
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    connections: u32,
    /// Connections per source address.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    per_source: u32,
    /// Quiet time before each memory reading, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    settle_ms: u64,
    /// Bound on each connect and reply, and on the gauge catching up, in milliseconds.
    #[arg(long, default_value_t = 20_000)]
    timeout_ms: u64,
    /// HELLO token, for servers that require one.
    #[arg(long, env = "SNOWLEASE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Serialize)]
struct Held {
    rss_idle_kib: u64,
    rss_conns_kib: u64,
    connections: u32,
    welcomed: u32,
    open_metric: f64,
    open_seconds: f64,
    threads: usize,
    sources: u32,
}

/// Runs `idle-conns`.
pub fn run(args: &Args) -> Result<bool, String> {
    let want = u64::from(args.connections) + 1024;
    if let Ok(got) = rlimit::increase_nofile_limit(want) {
        if got < want {
            return Err(format!(
                "the open-file limit is {got}, {want} needed: raise `ulimit -n`"
            ));
        }
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let settle = Duration::from_millis(args.settle_ms);
    let rss = || procfs::rss_kib(args.pid).ok_or(format!("no process {}", args.pid));
    // A timer, not synchronisation: memory is read once the process has been quiet a while.
    std::thread::sleep(settle);
    let rss_idle_kib = rss()?;
    let hello = Request::Hello {
        version: wire::VERSION,
        token: args.token.clone().unwrap_or_default().into_bytes().into(),
    }
    .to_bytes();
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections as usize);
    for i in 0..args.connections {
        let mut s = connect(args.addr, source(args.addr, i / args.per_source), timeout)?;
        s.write_all(&hello)
            .map_err(|e| format!("HELLO on connection {i}: {e}"))?;
        held.push(s);
    }
    let welcomed = held.iter_mut().map(welcome).filter(|w| *w).count() as u32;
    let open_seconds = started.elapsed().as_secs_f64();
    let gauge = || {
        http::get(args.admin, "/metrics", &[], timeout)
            .ok()
            .and_then(|r| http::metric_value(&r.body, "snowlease_connections_open"))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + timeout;
    let mut open_metric = gauge();
    // Bounded by `deadline`: the gauge counts connections the server has taken in.
    while open_metric < f64::from(args.connections) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        open_metric = gauge();
    }
    std::thread::sleep(settle);
    let rss_conns_kib = rss()?;
    let threads = procfs::threads(args.pid).unwrap_or(0);
    drop(held);
    super::print_json(&Held {
        rss_idle_kib,
        rss_conns_kib,
        connections: args.connections,
        welcomed,
        open_metric,
        open_seconds,
        threads,
        sources: args.connections.div_ceil(args.per_source),
    })?;
    Ok(welcomed == args.connections)
}

/// The source address of the `k`th group of connections: 127.0.0.(1 + k) towards a loopback
/// IPv4 server, the kernel's choice otherwise.
fn source(server: SocketAddr, k: u32) -> Option<IpAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && k < 254 => {
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8)))
        }
        _ => None,
    }
}

fn connect(
    server: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let fail = |e: std::io::Error| format!("connecting to {server} from {from:?}: {e}");
    let s = match from {
        None => TcpStream::connect_timeout(&server, timeout).map_err(fail)?,
        Some(ip) => {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .map_err(fail)?;
            socket.bind(&SocketAddr::new(ip, 0).into()).map_err(fail)?;
            socket
                .connect_timeout(&server.into(), timeout)
                .map_err(fail)?;
            socket.into()
        }
    };
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    Ok(s)
}

/// Reads one frame and says whether it is WELCOME.
fn welcome(s: &mut TcpStream) -> bool {
    let mut buf = bytes::BytesMut::with_capacity(64);
    let mut chunk = [0u8; 64];
    // Bounded by the socket's read timeout per read, and by the frame's small size.
    loop {
        match wire::decode_response(&mut buf) {
            Ok(Some(Response::Welcome(_))) => return true,
            Ok(Some(_)) | Err(_) => return false,
            Ok(None) => {}
        }
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_connections_come_from_successive_loopback_addresses() {
        let local: SocketAddr = "127.0.0.1:7609".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(source(local, 0), Some([127, 0, 0, 1].into()));
        assert_eq!(source(local, 9), Some([127, 0, 0, 10].into()));
        assert_eq!(source(local, 254), None);
        let remote: SocketAddr = "10.0.0.1:7609".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(source(remote, 0), None);
    }
}
