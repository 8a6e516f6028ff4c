//! Netdev creation, in QEMU 7.2's order (`qmp_netdev_add` → `net_client_init1`):
//! id well-formed → type creatable → id not a duplicate → the driver's own checks and
//! resources. Nothing is half-made: a failure leaves the registry as it was.
//!
//! Working drivers: `hubport`. `none` means "no network" on the command line (as QEMU's
//! `-nic none`) and is refused by `netdev_add` as QEMU refuses it. Every other driver is
//! checked with the option rules QEMU applies before it touches a resource, then answered
//! "not available yet" until its issue lands.

use netdevd_core::net::NetError;
use netdevd_qapi::{
    NetdevL2TPv3Options, NetdevSocketOptions, NetdevTapOptions, NetdevVariant,
    NetdevVhostUserOptions, NetdevVhostVDPAOptions,
};
use netdevd_qmp::{ErrorClass, QmpError};

use crate::state::{FdSource, State};

/// QMP's view of a core error.
pub fn net_error(e: NetError) -> QmpError {
    let class = match e {
        NetError::NotFound(_) => ErrorClass::DeviceNotFound,
        _ => ErrorClass::GenericError,
    };
    QmpError {
        class,
        desc: e.to_string(),
    }
}

fn err(desc: impl Into<String>) -> QmpError {
    QmpError::generic(desc)
}

/// Create a netdev. `fds` resolves `fd=` names (the calling monitor's, or none on the
/// command line).
pub fn netdev_add(
    state: &mut State,
    nd: netdevd_qapi::Netdev,
    fds: &mut dyn FdSource,
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
    if state.net.find_netdev(&nd.id).is_some() {
        return Err(err(format!("Duplicate ID '{}'", nd.id)));
    }
    match &nd.variant {
        NetdevVariant::Hubport(h) => {
            state
                .net
                .add_hubport(&nd.id, h.hubid, h.netdev.as_deref())
                .map_err(net_error)?;
            return Ok(());
        }
        NetdevVariant::Socket(o) => check_socket(o, fds)?,
        NetdevVariant::Tap(o) => check_tap(o, fds)?,
        NetdevVariant::L2tpv3(o) => check_l2tpv3(o)?,
        NetdevVariant::VhostUser(o) => check_vhost_user(o)?,
        NetdevVariant::VhostVdpa(o) => check_vhost_vdpa(o)?,
        _ => {}
    }
    Err(err(format!(
        "netdev type '{}' is not available in netdevd yet",
        kind.as_str()
    )))
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

/// `net/tap.c` `net_init_tap`'s option rules, with QEMU's aborts answered as errors.
fn check_tap(o: &NetdevTapOptions, fds: &mut dyn FdSource) -> Result<(), QmpError> {
    if let Some(fd) = &o.fd {
        if o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.helper.is_some()
            || o.queues.is_some()
            || o.fds.is_some()
            || o.vhostfds.is_some()
        {
            return Err(err(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd=",
            ));
        }
        fds.check_fd(fd)?;
    } else if let Some(list) = &o.fds {
        if o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.helper.is_some()
            || o.queues.is_some()
            || o.vhostfd.is_some()
        {
            return Err(err(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds=",
            ));
        }
        if list.is_empty() {
            // QEMU 7.2 aborts on an empty list.
            return Err(err("fds= needs at least one file descriptor"));
        }
        for fd in list.split(':') {
            fds.check_fd(fd)?;
        }
    } else if o.helper.is_some() {
        if o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.queues.is_some()
            || o.vhostfds.is_some()
        {
            return Err(err(
                "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are invalid with helper=",
            ));
        }
    } else {
        if o.vhostfds.is_some() {
            return Err(err("vhostfds= is invalid if fds= wasn't specified"));
        }
        if o.queues == Some(0) {
            // QEMU 7.2 aborts on queues=0.
            return Err(err("queues= must be at least 1"));
        }
    }
    Ok(())
}

/// `net/l2tpv3.c` `net_init_l2tpv3`'s option rules, in QEMU's order.
fn check_l2tpv3(o: &NetdevL2TPv3Options) -> Result<(), QmpError> {
    if o.offset.is_some_and(|off| off > 256) {
        return Err(err("offset must be less than 256 bytes"));
    }
    if o.rxcookie.is_some() != o.txcookie.is_some() {
        return Err(err("require both 'rxcookie' and 'txcookie' or neither"));
    }
    if o.udp == Some(true) && (o.srcport.is_none() || o.dstport.is_none()) {
        return Err(err("need both src and dst port for udp"));
    }
    Ok(())
}

/// `net/vhost-user.c`: netdevd has no chardevs yet, so every name is unknown.
fn check_vhost_user(o: &NetdevVhostUserOptions) -> Result<(), QmpError> {
    if let Some(q) = o.queues {
        if !(1..=1024).contains(&q) {
            return Err(err(
                "vhost-user number of queues must be in range [1, 1024]",
            ));
        }
    }
    Err(err(format!("chardev \"{}\" not found", o.chardev)))
}

/// `net/vhost-vdpa.c` (7.2 texts).
fn check_vhost_vdpa(o: &NetdevVhostVDPAOptions) -> Result<(), QmpError> {
    if o.vhostdev.is_none() {
        return Err(err(
            "vhost-vdpa: neither vhostdev= nor vhostfd= was specified",
        ));
    }
    Ok(())
}
