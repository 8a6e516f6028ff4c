//! QEMU 7.2's `dgram` netdev: UDP (unicast or multicast), unix datagram sockets, or a
//! passed fd.

use std::path::PathBuf;

use netdevd_backends::addr::{convert_host_port, inet_aton};
use netdevd_backends::dgram::{DgramBackend, DgramConfig};
use netdevd_qapi::{NetdevDgramOptions, SocketAddressVariant};
use netdevd_qmp::QmpError;

use super::{addr_err, err};
use crate::fds::FdSource;
use crate::registry::Registry;

/// Create a `dgram` netdev `id`.
pub(super) fn add(
    reg: &mut Registry,
    id: &str,
    o: &NetdevDgramOptions,
    fds: &mut dyn FdSource,
) -> Result<(), QmpError> {
    let cfg = dgram_config(o, fds)?;
    reg.add_backend(id, "dgram", |r| DgramBackend::new(r, cfg))
}

/// QEMU 7.2's `dgram` netdev, with its rules and texts (`net/dgram.c`).
fn dgram_config(o: &NetdevDgramOptions, fds: &mut dyn FdSource) -> Result<DgramConfig, QmpError> {
    let (local, remote) = (o.local.as_ref(), o.remote.as_ref());
    if let Some(SocketAddressVariant::Inet(r)) = remote.map(|r| &r.variant) {
        let group = convert_host_port(&r.host, &r.port).map_err(addr_err)?;
        if group.ip().is_multicast() {
            let localaddr = match local.map(|l| &l.variant) {
                None => None,
                Some(SocketAddressVariant::Inet(l)) => {
                    Some(inet_aton(&l.host).ok_or_else(|| {
                        err(format!(
                            "localaddr '{}' is not a valid IPv4 address",
                            l.host
                        ))
                    })?)
                }
                Some(_) => return Err(err("only support inet or fd type for local")),
            };
            return Ok(DgramConfig::Mcast { group, localaddr });
        }
    }
    let Some(local) = local else {
        return Err(err("dgram requires local= parameter"));
    };
    match remote {
        Some(r) => {
            if matches!(local.variant, SocketAddressVariant::Fd(_)) {
                return Err(err("don't set remote with local.fd"));
            }
            if std::mem::discriminant(&r.variant) != std::mem::discriminant(&local.variant) {
                return Err(err("remote and local types must be the same"));
            }
        }
        None => {
            if !matches!(local.variant, SocketAddressVariant::Fd(_)) {
                return Err(err("type=inet or type=unix requires remote parameter"));
            }
        }
    }
    match (&local.variant, remote.map(|r| &r.variant)) {
        (SocketAddressVariant::Inet(l), Some(SocketAddressVariant::Inet(r))) => {
            Ok(DgramConfig::Udp {
                local: convert_host_port(&l.host, &l.port).map_err(addr_err)?,
                remote: convert_host_port(&r.host, &r.port).map_err(addr_err)?,
            })
        }
        (SocketAddressVariant::Unix(l), Some(SocketAddressVariant::Unix(r))) => {
            Ok(DgramConfig::Unix {
                local: PathBuf::from(&l.path),
                remote: PathBuf::from(&r.path),
            })
        }
        (SocketAddressVariant::Fd(f), None) => {
            let fd = fds.take_fd(&f.str)?;
            Ok(DgramConfig::Fd { fd, dest: None })
        }
        _ => Err(err("only support inet or fd type for local")),
    }
}
