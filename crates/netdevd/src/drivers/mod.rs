//! Netdev creation, in QEMU 7.2's order (`qmp_netdev_add` → `net_client_init1`):
//! id well-formed → type creatable → id not a duplicate → the driver's own checks and
//! resources. Nothing is half-made: a failure leaves the registry as it was.
//!
//! One file per driver, each with an `add` that checks its options (QEMU's rules and
//! texts) and builds its backend through [`Registry::add_backend`]: `socket.rs`,
//! `stream.rs`, `dgram.rs`, `tap.rs` (and `bridge`), `user.rs`; `hubport` is the core's own.
//! `unavailable.rs` checks the options of drivers netdevd does not have yet, which are then
//! answered "not available yet". `none` means "no network" on the command line (as QEMU's
//! `-nic none`) and is refused by `netdev_add` as QEMU refuses it. A new driver is its file
//! plus its line in [`netdev_add`]'s table; nothing outside this directory changes.

use std::path::Path;

use netdevd_qapi::schema::Ty;
use netdevd_qapi::{parse_as, Netdev, NetdevVariant, NETDEV};
use netdevd_qmp::QmpError;
use serde_json::Value;

use crate::fds::FdSource;
use crate::registry::{net_error, Registry};

mod dgram;
pub mod nic;
mod socket;
mod stream;
mod tap;
mod unavailable;
pub mod user;

fn err(desc: impl Into<String>) -> QmpError {
    QmpError::generic(desc)
}

fn addr_err(e: impl std::fmt::Display) -> QmpError {
    err(e.to_string())
}

/// Create a netdev. `fds` resolves `fd=` names (the calling monitor's, or none on the
/// command line); the user netdev's upstream resolvers come from `resolv_conf`.
pub fn netdev_add(
    reg: &mut Registry,
    nd: Netdev,
    fds: &mut dyn FdSource,
    resolv_conf: &Path,
) -> Result<(), QmpError> {
    if !netdevd_core::id_wellformed(&nd.id) {
        return Err(err("Parameter 'id' expects an identifier"));
    }
    let kind = nd.variant.kind();
    if matches!(nd.variant, NetdevVariant::Nic(_) | NetdevVariant::None) {
        return Err(err(format!(
            "network backend '{}' is not compiled into this binary",
            kind.as_str()
        )));
    }
    if reg.net.find_netdev(&nd.id).is_some() {
        return Err(err(format!("Duplicate ID '{}'", nd.id)));
    }
    let id = nd.id.as_str();
    match &nd.variant {
        NetdevVariant::Hubport(h) => {
            reg.net
                .add_hubport(id, h.hubid, h.netdev.as_deref())
                .map_err(net_error)?;
            return Ok(());
        }
        NetdevVariant::Socket(o) => return socket::add(reg, id, o, fds),
        NetdevVariant::Stream(o) => return stream::add(reg, id, o, fds),
        NetdevVariant::Dgram(o) => return dgram::add(reg, id, o, fds),
        NetdevVariant::Tap(o) => return tap::add(reg, id, o, fds),
        NetdevVariant::Bridge(o) => return tap::add_bridge(reg, id, o),
        NetdevVariant::User(o) => return user::add(reg, id, o, resolv_conf),
        NetdevVariant::L2tpv3(o) => unavailable::check_l2tpv3(o)?,
        NetdevVariant::VhostUser(o) => unavailable::check_vhost_user(o)?,
        NetdevVariant::VhostVdpa(o) => unavailable::check_vhost_vdpa(o)?,
        _ => {}
    }
    Err(err(format!(
        "netdev type '{}' is not available in netdevd yet",
        kind.as_str()
    )))
}

/// Parse one `--netdev` value (keyval or JSON) into a checked `Netdev`.
pub fn parse_netdev_option(s: &str) -> Result<Netdev, String> {
    let ty = Ty::Union(&NETDEV);
    let value = if s.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(s).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let tree = netdevd_qapi::keyval::parse(s, Some("type")).map_err(|e| e.to_string())?;
        netdevd_qapi::keyval::coerce(&tree, &ty).map_err(|e| e.to_string())?
    };
    parse_as(&value, &ty).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdev_options_from_the_command_line() {
        let nd = parse_netdev_option("hubport,id=h0,hubid=0").unwrap();
        assert_eq!(nd.id, "h0");
        let nd2 = parse_netdev_option(r#"{"type":"hubport","id":"h0","hubid":0}"#).unwrap();
        assert_eq!(nd, nd2);
        assert!(parse_netdev_option("hubport,id=h0")
            .unwrap_err()
            .contains("hubid"));
        assert!(parse_netdev_option("{bad").unwrap_err().contains("JSON"));
    }
}
