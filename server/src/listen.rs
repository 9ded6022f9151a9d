//! The listening sockets, all bound before anything is written or accepted.
//!
//! [`bind_lease`] makes one SO_REUSEPORT listener per core on the lease address (the kernel
//! spreads incoming connections over their accept queues), after checking that no other
//! process listens there: SO_REUSEPORT would otherwise let a second server join the port
//! silently and take half the connections. [`bind_admin`] binds the admin HTTP port. Start-up
//! binds both before it writes a mark or starts a thread, so a start that fails on a port
//! has changed nothing.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{io_err, StartError};

/// One SO_REUSEPORT listener per core on the same address. With port 0 the first socket picks
/// a free port and the others join it.
pub fn bind_lease(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    if addr.port() != 0 {
        ensure_free(addr)?;
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let l = reuseport_listener(addr, backlog)
            .map_err(io_err(format!("binding the lease port {addr}")))?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(io_err("reading the lease address"))?;
        }
        out.push(l);
    }
    Ok(out)
}

/// Fails if some socket already listens on `addr`: a plain bind (SO_REUSEADDR, which only
/// forgives TIME_WAIT, not a listener) is refused with EADDRINUSE whether or not that socket
/// set SO_REUSEPORT.
fn ensure_free(addr: SocketAddr) -> Result<(), StartError> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io_err("creating a socket"))?;
    probe
        .set_reuse_address(true)
        .map_err(io_err("configuring a socket"))?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(StartError::Io {
            what: format!(
                "the lease port {addr} is already in use (another snowlease-server?); two servers sharing a port through SO_REUSEPORT would split its clients between them, so this one refuses"
            ),
            source: e,
        }),
        Err(e) => Err(io_err(format!("binding the lease port {addr}"))(e)),
    }
}

/// A listening socket with SO_REUSEPORT set before bind, so the kernel spreads incoming
/// connections across the cores' accept queues.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The admin HTTP listener, non-blocking for tokio.
pub fn bind_admin(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let admin = std::net::TcpListener::bind(addr)
        .map_err(io_err(format!("binding the admin port {addr}")))?;
    admin
        .set_nonblocking(true)
        .map_err(io_err("configuring the admin port"))?;
    Ok(admin)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_core_shares_one_os_assigned_port() {
        let ls = bind_lease(SocketAddr::from(([127, 0, 0, 1], 0)), 3, 16).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_port_another_process_listens_on_is_refused_even_with_reuseport() {
        let other = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).unwrap();
        let taken = other.local_addr().unwrap();
        let err = bind_lease(taken, 2, 16).unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
    }
}
