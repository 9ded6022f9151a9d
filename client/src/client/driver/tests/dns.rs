//! DNS churn after a loss: a name that lost a server is resolved again within 250 ms and
//! then with backoff, so a server back in DNS (same address or a new one) is connected
//! within one 2 s step; a Service that stays smaller stops the early lookups after five
//! minutes.

use super::*;
use crate::client::driver::recheck::{RECHECK_MAX, RECHECK_WINDOW};
use crate::client::{DEFAULT_RESOLVE_INTERVAL, MIN_SILENCE};

const NAME: &str = "ids.svc:7609";
const D: &str = "10.0.0.4:7609";
const E: &str = "10.0.0.5:7609";

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| addr(a)).collect()
}

/// A headless name listing A to D, all four connected, greeted and answering.
fn four_behind_a_name() -> Harness {
    let mut h = Harness::new(ClientConfig::new([NAME]));
    h.dns = Some(addrs(&[A, B, C, D]));
    h.auto = true;
    h.step = Duration::from_millis(10);
    h.advance(Duration::from_millis(10));
    let opened: Vec<ConnId> = h.opened.iter().map(|&(c, _)| c).collect();
    assert_eq!(opened.len(), 4);
    for (i, conn) in opened.into_iter().enumerate() {
        h.welcome(conn, u16::try_from(i + 1).unwrap());
    }
    h.advance(Duration::from_secs(1));
    h
}

/// A's pod goes away: its connection ends and DNS stops listing it.
fn lose_a(h: &mut Harness) -> Instant {
    h.dns = Some(addrs(&[B, C, D]));
    let conn = h.conn_of(A).unwrap();
    h.close(conn);
    h.now
}

/// Advances until a connection to `to` opens (at most a minute); returns when it opened.
fn connected_to(h: &mut Harness, to: &str, after: Instant) -> Instant {
    let end = h.now + Duration::from_secs(60);
    while h.now < end {
        let found = h
            .opened
            .iter()
            .find(|&&(c, a)| a == addr(to) && h.opened_at[&c] >= after);
        if let Some(&(conn, _)) = found {
            return h.opened_at[&conn];
        }
        h.advance(h.step);
    }
    panic!("no connection to {to} within a minute");
}

#[test]
fn a_server_back_in_dns_is_connected_within_one_recheck_step() {
    // (outage, address when back, longest wait after it is back in DNS)
    let cases = [
        (Duration::from_secs(1), A, RECHECK_MAX),
        (Duration::from_secs(10), E, RECHECK_MAX),
        (Duration::from_secs(60), A, RECHECK_MAX),
        (Duration::from_secs(200), E, RECHECK_MAX),
        // Past the window the Service counts as scaled down: found at the periodic lookup.
        (
            RECHECK_WINDOW + Duration::from_secs(60),
            E,
            DEFAULT_RESOLVE_INTERVAL,
        ),
    ];
    for (outage, back, bound) in cases {
        let mut h = four_behind_a_name();
        lose_a(&mut h);
        h.advance(outage);
        h.dns = Some(addrs(&[back, B, C, D]));
        let returned = h.now;
        let waited = connected_to(&mut h, back, returned) - returned;
        assert!(
            waited <= bound + h.step,
            "outage {outage:?}, back as {back}: connected {waited:?} after DNS listed it"
        );
    }
}

#[test]
fn rechecks_double_from_250_ms_to_2_s_and_end_once_the_endpoint_is_whole() {
    let mut h = four_behind_a_name();
    h.step = Duration::from_millis(1);
    let before = h.resolves.len();
    let lost = lose_a(&mut h);
    h.advance(Duration::from_secs(10));
    let after_loss: Vec<u128> = h.resolve_times[before..]
        .iter()
        .map(|t| (*t - lost).as_millis())
        .collect();
    // One lookup before A's reconnect (at its 25-50 ms backoff), then the rechecks.
    assert_eq!(after_loss.len(), 8, "{after_loss:?}");
    assert!((25..=51).contains(&after_loss[0]), "{after_loss:?}");
    assert_eq!(
        after_loss[1..],
        [250, 750, 1750, 3750, 5750, 7750, 9750],
        "{after_loss:?}"
    );
    // A comes back, is connected at the next recheck and greeted; the next recheck finds
    // the endpoint whole and ends without a lookup; the periodic one is 30 s after the last.
    h.dns = Some(addrs(&[A, B, C, D]));
    let now = h.now;
    let back = connected_to(&mut h, A, now);
    let conn = h.conn_of(A).unwrap();
    h.welcome(conn, 1);
    assert_eq!((back - lost).as_millis(), 11_750);
    let settled = h.resolves.len();
    h.advance(Duration::from_secs(25));
    assert_eq!(
        h.resolves.len(),
        settled,
        "no lookup before resolve_interval"
    );
    h.advance(Duration::from_secs(6));
    assert_eq!(h.resolves.len(), settled + 1, "the periodic lookup");
}

#[test]
fn a_silent_connection_has_its_name_resolved_again() {
    let mut h = four_behind_a_name();
    h.step = Duration::from_millis(1);
    let conn = h.conn_of(A).unwrap();
    h.silent.insert(conn);
    h.engine.on_lease(7, 10);
    h.engine.on_lease(8, 10);
    h.engine.on_lease(9, 10);
    h.engine.on_lease(10, 10);
    h.pass();
    assert!(h.written(conn) > 0, "A owes a reply");
    let before = h.resolves.len();
    let owed_since = h.now;
    h.advance(Duration::from_millis(300));
    let first = h.resolve_times[before..].first().copied();
    let after = first.map(|t| t - owed_since);
    // Silent after the 20 ms floor, re-resolved 250 ms later.
    assert_eq!(after, Some(MIN_SILENCE + Duration::from_millis(250)));
}
