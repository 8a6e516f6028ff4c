//! QEMU 7.2's `stream` netdev: a stream socket (inet or unix, server or client, or a
//! passed fd) carrying length-prefixed frames.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use netdevd_backends::stream::{StreamAddr, StreamBackend, StreamConfig};
use netdevd_qapi::{NetdevStreamOptions, SocketAddress, SocketAddressVariant};
use netdevd_qmp::QmpError;

use super::err;
use super::socket::{fd_kind, Socket};
use crate::fds::FdSource;
use crate::registry::Registry;

/// Create a `stream` netdev `id`.
pub(super) fn add(
    reg: &mut Registry,
    id: &str,
    o: &NetdevStreamOptions,
    fds: &mut dyn FdSource,
) -> Result<(), QmpError> {
    let cfg = stream_config(o, fds)?;
    reg.add_backend(id, "stream", |r| StreamBackend::new(r, cfg))
}

/// An inet `SocketAddress` of the 7.2 netdevs: numeric hosts (IPv4 or IPv6) are taken as
/// they are; names are looked up. The port must be a number.
fn inet_addr(host: &str, port: &str) -> Result<SocketAddr, QmpError> {
    let p: u16 = port
        .parse()
        .map_err(|_| err(format!("port number '{port}' is invalid")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], p)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, p));
    }
    (host, p)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| err(format!("address resolution failed for {host}:{port}")))
}

fn stream_addr(a: &SocketAddress) -> Result<StreamAddr, QmpError> {
    match &a.variant {
        SocketAddressVariant::Inet(i) => Ok(StreamAddr::Inet(inet_addr(&i.host, &i.port)?)),
        SocketAddressVariant::Unix(u) => Ok(StreamAddr::Unix {
            path: PathBuf::from(&u.path),
            abstract_name: u.r#abstract == Some(true),
        }),
        SocketAddressVariant::Vsock(_) => Err(err("vsock addresses are not supported by netdevd")),
        SocketAddressVariant::Fd(_) => Err(err("an fd address cannot be used here")),
    }
}

/// QEMU 7.2's `stream` netdev.
fn stream_config(
    o: &NetdevStreamOptions,
    fds: &mut dyn FdSource,
) -> Result<StreamConfig, QmpError> {
    let server = o.server == Some(true);
    if let SocketAddressVariant::Fd(f) = &o.addr.variant {
        let fd = fds.take_fd(&f.str)?;
        return match fd_kind(fd, &f.str, server)? {
            Socket::Stream(c) => Ok(c),
            _ => Err(err(format!("fd={} is not a stream socket", f.str))),
        };
    }
    let addr = stream_addr(&o.addr)?;
    Ok(if server {
        StreamConfig::Listen(addr)
    } else {
        StreamConfig::Connect(addr)
    })
}
