//! A minimal HTTP/1.1 client for the admin port (one `GET`, `Connection: close`, the whole
//! reply read), and lookups in the Prometheus text it serves at `/metrics`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A reply: status code, head (status line and headers) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// Status line and headers, as sent.
    pub head: String,
    /// Everything after the blank line.
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` with the extra `headers`; connecting, writing and every read bounded by
/// `timeout`.
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(text: &str) -> io::Result<HttpReply> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("not an HTTP/1.x status line"))?;
    Ok(HttpReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// The value of the series written exactly as `series` (a name, or a name with its labels
/// as the server prints them, e.g. `snowlease_leases_total{outcome="granted"}`).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The sum of every series of the metric family `name`, whatever their labels.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::TcpListener;

    use super::*;

    const METRICS: &str = "# HELP snowlease_leases_total Leases.\n\
        snowlease_leases_total{outcome=\"granted\"} 7\n\
        snowlease_leases_total{outcome=\"refused\"} 2\n\
        snowlease_leases_total_extra 100\n\
        snowlease_connections_open 3\n";

    #[test]
    fn a_series_is_found_by_its_exact_name_and_a_family_is_summed() {
        assert_eq!(
            metric_value(METRICS, "snowlease_connections_open"),
            Some(3.0)
        );
        assert_eq!(
            metric_value(METRICS, "snowlease_leases_total{outcome=\"refused\"}"),
            Some(2.0)
        );
        assert_eq!(metric_value(METRICS, "snowlease_leases_total"), None);
        assert_eq!(metric_sum(METRICS, "snowlease_leases_total"), 9.0);
        assert_eq!(metric_sum(METRICS, "snowlease_nothing"), 0.0);
    }

    #[test]
    fn a_get_returns_status_headers_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = s.read(&mut request).unwrap();
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\nnot ready")
                .unwrap();
            request
        });
        let reply = get(
            addr,
            "/readyz",
            &[("Authorization", "Bearer t")],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.body, "not ready");
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Authorization: Bearer t\r\n"), "{request}");
    }

    #[test]
    fn a_reply_that_is_not_http_is_an_error() {
        assert!(parse("SSH-2.0-OpenSSH\r\n").is_err());
        assert_eq!(parse("HTTP/1.0 200 OK\r\n\r\n").unwrap().status, 200);
    }
}
