//! Drivers of the schema netdevd does not have yet: their options are checked with the
//! rules QEMU applies before it touches a resource, so that a wrong option gets QEMU's
//! answer; a right one gets "not available in netdevd yet" (`super::netdev_add`).

use netdevd_qapi::{NetdevL2TPv3Options, NetdevVhostUserOptions, NetdevVhostVDPAOptions};
use netdevd_qmp::QmpError;

use super::err;

/// `net/l2tpv3.c` `net_init_l2tpv3`'s option rules, in QEMU's order.
pub(super) fn check_l2tpv3(o: &NetdevL2TPv3Options) -> Result<(), QmpError> {
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
pub(super) fn check_vhost_user(o: &NetdevVhostUserOptions) -> Result<(), QmpError> {
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
pub(super) fn check_vhost_vdpa(o: &NetdevVhostVDPAOptions) -> Result<(), QmpError> {
    if o.vhostdev.is_none() {
        return Err(err(
            "vhost-vdpa: neither vhostdev= nor vhostfd= was specified",
        ));
    }
    Ok(())
}
