//! What the tests of the real binary share: a [`Server`] started through
//! `snowlease-testkit`, a small blocking protocol [`Client`], a bounded [`refusal`] run, and
//! the faketime check. Used by `binary.rs` and `audit.rs`; each uses part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::BytesMut;
use snowlease::wire::{self, Request, Response};
use snowlease_testkit::{ServerCommand, ServerProcess, Signal, LIBFAKETIME};

pub const BIN: &str = env!("CARGO_BIN_EXE_snowlease-server");
pub const TIMEOUT: Duration = Duration::from_secs(15);

pub struct Server {
    pub process: ServerProcess,
    pub lease: SocketAddr,
    /// Log lines up to and including the start line.
    pub early: Vec<String>,
}

impl Server {
    pub fn start(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        let process = ServerCommand::new(BIN)
            .wrapper(prefix)
            .args(["--threads", "2"])
            .args(args)
            .envs(env.iter().copied())
            .startup_timeout(TIMEOUT)
            .spawn()
            .unwrap_or_else(|e| panic!("no start line within {TIMEOUT:?}: {e}"));
        Server {
            lease: process.lease_addr(),
            early: process.startup_log(),
            process,
        }
    }

    pub fn signal(&self, sig: Signal) {
        self.process.signal(sig).expect("kill");
    }

    /// Waits for the process to exit (bounded); panics with the status otherwise.
    pub fn wait(&mut self) -> ExitStatus {
        self.process
            .wait_exit(TIMEOUT)
            .unwrap_or_else(|| panic!("server did not exit"))
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.process
            .metric(name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }
}

/// A blocking protocol client.
pub struct Client {
    pub s: TcpStream,
    pub buf: BytesMut,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Client {
            s,
            buf: BytesMut::new(),
        }
    }

    pub fn response(&mut self) -> Option<Response> {
        loop {
            if let Some(r) = wire::decode_response(&mut self.buf).expect("well-formed") {
                return Some(r);
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read within timeout");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one request.
    pub fn send(&mut self, request: &Request) {
        self.s.write_all(&request.to_bytes()).expect("write");
    }

    /// Leases `n` blocks of 4096; returns every (first, count).
    pub fn lease_many(&mut self, n: u32) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for i in 0..n {
            self.s
                .write_all(
                    &Request::Lease {
                        request_id: i,
                        count: 4096,
                    }
                    .to_bytes(),
                )
                .expect("write");
            match self.response() {
                Some(Response::Leased {
                    request_id,
                    first_id,
                    count,
                }) if request_id == i => out.push((first_id, count)),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }
}

pub fn refusal(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = ServerCommand::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .run_to_exit(TIMEOUT)
        .unwrap_or_else(|e| panic!("expected a refusal for {env:?} {args:?}: {e}"));
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a refusal for {env:?} {args:?}"
    );
    out.stderr()
}

/// Whether Debian's faketime is installed. CI (`CI` set) installs it and fails without it; on
/// a developer machine without it the clock tests say loudly that they did not run.
pub fn have_faketime() -> bool {
    if Path::new(LIBFAKETIME).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install Debian's faketime (apt-get install faketime)"
    );
    eprintln!("SKIPPED: clock tests need Debian's faketime: apt-get install faketime");
    false
}

pub fn max_end(runs: &[(u64, u32)]) -> u64 {
    runs.iter()
        .map(|(f, c)| f + u64::from(*c))
        .max()
        .expect("some runs")
}
