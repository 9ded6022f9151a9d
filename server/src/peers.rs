//! Open lease connections per peer (source IP address), for `--max-connections-per-peer`.
//!
//! The accept loops of every core ask [`PeerTable::admit`] for each new connection; the
//! [`PeerPermit`] it returns travels with the connection's task and uncounts the connection
//! when dropped. A peer at its cap gets `None`, and the accept loop turns it away with
//! OVERLOADED. Accepts are rare next to leases, so one mutex-guarded map serves all cores.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Open lease connections per peer (source IP address), for `--max-connections-per-peer`.
#[derive(Debug)]
pub struct PeerTable {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its peer; uncounted when dropped.
#[derive(Debug)]
pub struct PeerPermit {
    table: Arc<PeerTable>,
    ip: Option<IpAddr>,
}

impl PeerTable {
    /// A table allowing `cap` connections per peer; 0 = no cap.
    pub fn new(cap: usize) -> PeerTable {
        PeerTable {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection from `peer`, or `None` if the peer is at its cap.
    pub fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<PeerPermit> {
        let ip = peer.map(|p| p.ip()).filter(|_| self.cap > 0);
        if let Some(ip) = ip {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(ip).or_insert(0);
            if *n >= self.cap {
                return None;
            }
            *n += 1;
        }
        Some(PeerPermit {
            table: self.clone(),
            ip,
        })
    }

    /// Open connections from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_at_its_cap_is_refused_and_others_are_not() {
        let table = Arc::new(PeerTable::new(2));
        let a = Some(SocketAddr::from(([10, 0, 0, 1], 1000)));
        let b = Some(SocketAddr::from(([10, 0, 0, 2], 1000)));
        let first = table.admit(a).unwrap();
        let _second = table.admit(a).unwrap();
        assert!(table.admit(a).is_none());
        assert!(table.admit(b).is_some());
        drop(first);
        assert!(
            table.admit(a).is_some(),
            "a closed connection frees its slot"
        );
        assert_eq!(table.open_from([10, 0, 0, 2].into()), 0);
    }

    #[test]
    fn no_cap_counts_nothing() {
        let table = Arc::new(PeerTable::new(0));
        let a = Some(SocketAddr::from(([10, 0, 0, 1], 1000)));
        let permits: Vec<_> = (0..100).map(|_| table.admit(a).unwrap()).collect();
        assert_eq!(table.open_from([10, 0, 0, 1].into()), 0);
        drop(permits);
    }
}
