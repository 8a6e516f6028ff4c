//! The `socket` netdev (QEMU 7.2's `net/socket.c`): listen, connect, mcast, udp and fd,
//! onto the stream and datagram backends.

use std::os::fd::OwnedFd;

use netdevd_backends::addr::{inet_aton, parse_host_port};
use netdevd_backends::dgram::{DgramBackend, DgramConfig};
use netdevd_backends::stream::{StreamAddr, StreamBackend, StreamConfig};
use netdevd_qapi::NetdevSocketOptions;
use netdevd_qmp::QmpError;

use super::{addr_err, err};
use crate::fds::FdSource;
use crate::registry::Registry;

/// What a socket netdev runs on.
pub(super) enum Socket {
    Stream(StreamConfig),
    Dgram(DgramConfig),
}

/// Create a `socket` netdev `id`.
pub(super) fn add(
    reg: &mut Registry,
    id: &str,
    o: &NetdevSocketOptions,
    fds: &mut dyn FdSource,
) -> Result<(), QmpError> {
    check_socket(o, fds)?;
    add_socket(reg, id, "socket", socket_config(o, fds)?)
}

/// A stream or datagram backend for a socket of either kind.
pub(super) fn add_socket(
    reg: &mut Registry,
    id: &str,
    model: &'static str,
    s: Socket,
) -> Result<(), QmpError> {
    match s {
        Socket::Stream(c) => reg.add_backend(id, model, |r| StreamBackend::new(r, c)),
        Socket::Dgram(c) => reg.add_backend(id, model, |r| DgramBackend::new(r, c)),
    }
}

/// `net/socket.c` `net_init_socket`'s option rules.
fn check_socket(o: &NetdevSocketOptions, fds: &mut dyn FdSource) -> Result<(), QmpError> {
    let modes = [
        o.fd.is_some(),
        o.listen.is_some(),
        o.connect.is_some(),
        o.mcast.is_some(),
        o.udp.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err(err(
            "exactly one of listen=, connect=, mcast= or udp= is required",
        ));
    }
    if o.localaddr.is_some() && o.mcast.is_none() && o.udp.is_none() {
        return Err(err("localaddr= is only valid with mcast= or udp="));
    }
    if let Some(fd) = &o.fd {
        fds.check_fd(fd)?;
    }
    if o.udp.is_some() && o.localaddr.is_none() {
        return Err(err("localaddr= is mandatory with udp="));
    }
    Ok(())
}

/// A passed socket fd: a stream or a datagram socket (`net_socket_fd_init`).
pub(super) fn fd_kind(fd: OwnedFd, param: &str, listening_ok: bool) -> Result<Socket, QmpError> {
    use rustix::net::{sockopt, SocketType};
    let ty = sockopt::socket_type(&fd).map_err(|e| err(format!("can't use fd={param}: {e}")))?;
    if ty == SocketType::STREAM {
        let listening = sockopt::socket_acceptconn(&fd).unwrap_or(false);
        if listening && listening_ok {
            return Ok(Socket::Stream(StreamConfig::Listening(fd)));
        }
        return Ok(Socket::Stream(StreamConfig::Connected(fd)));
    }
    if ty == SocketType::DGRAM {
        return Ok(Socket::Dgram(DgramConfig::Fd { fd, dest: None }));
    }
    Err(err(format!(
        "socket type={} for fd={param} must be either SOCK_DGRAM or SOCK_STREAM",
        ty.as_raw()
    )))
}

/// The `socket` netdev's mode, with QEMU's address rules (`net/socket.c`).
fn socket_config(o: &NetdevSocketOptions, fds: &mut dyn FdSource) -> Result<Socket, QmpError> {
    if let Some(fd) = &o.fd {
        let owned = fds.take_fd(fd)?;
        return fd_kind(owned, fd, false);
    }
    if let Some(l) = &o.listen {
        let a = parse_host_port(l).map_err(addr_err)?;
        return Ok(Socket::Stream(StreamConfig::Listen(StreamAddr::Inet(
            a.into(),
        ))));
    }
    if let Some(c) = &o.connect {
        let a = parse_host_port(c).map_err(addr_err)?;
        return Ok(Socket::Stream(StreamConfig::Connect(StreamAddr::Inet(
            a.into(),
        ))));
    }
    if let Some(m) = &o.mcast {
        let group = parse_host_port(m).map_err(addr_err)?;
        let localaddr = match &o.localaddr {
            Some(l) => Some(
                inet_aton(l)
                    .ok_or_else(|| err(format!("localaddr '{l}' is not a valid IPv4 address")))?,
            ),
            None => None,
        };
        return Ok(Socket::Dgram(DgramConfig::Mcast { group, localaddr }));
    }
    if let Some(u) = &o.udp {
        let remote = parse_host_port(u).map_err(addr_err)?;
        let local =
            parse_host_port(o.localaddr.as_deref().unwrap_or_default()).map_err(addr_err)?;
        return Ok(Socket::Dgram(DgramConfig::Udp { local, remote }));
    }
    Err(err(
        "exactly one of listen=, connect=, mcast= or udp= is required",
    ))
}
