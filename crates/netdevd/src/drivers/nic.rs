//! NICs: virtio-net devices netdevd serves to a VMM over vhost-user
//! (`netdevd_backends::vhost_user_nic`), each a client of the core with QEMU's NIC
//! behaviour (filter state, link, announce) peered with a netdev.
//!
//! Created on the command line with `--nic`, whose keys are QEMU's `-net nic`
//! (`NetLegacyNicOptions`) ones plus the socket: `id` (the client's name, QEMU's id rules;
//! default `nicN`), `netdev` (the netdev it is attached to), `macaddr` (default QEMU's
//! 52:54:00:12:34:56 plus the NIC's index), `model` (`virtio` or `virtio-net-pci`, the only
//! model), `vectors` (accepted: interrupts are the VMM's), and `socket=PATH`, where netdevd
//! listens (server mode) for the VMM's `-chardev socket,path=PATH` + `-netdev vhost-user`,
//! or with `server=off` connects to a VMM listening there (retried every second).

use std::path::PathBuf;

use netdevd_backends::vhost_user_nic::{NicConfig, VhostUserNic};
use netdevd_core::frame::MacAddr;
use netdevd_core::nic::Nic;
use netdevd_qmp::QmpError;

use super::err;
use crate::registry::Registry;

/// A `--nic` option, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicOptions {
    pub id: Option<String>,
    pub netdev: Option<String>,
    pub macaddr: Option<MacAddr>,
    pub socket: PathBuf,
    /// netdevd listens on the socket (`server=on`, the default) or connects to it.
    pub server: bool,
}

/// Parse `--nic` keys.
pub fn parse(s: &str) -> Result<NicOptions, String> {
    let mut o = NicOptions {
        id: None,
        netdev: None,
        macaddr: None,
        socket: PathBuf::new(),
        server: true,
    };
    let mut socket = None;
    for kv in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("Expected '=' after parameter '{kv}'"))?;
        match k {
            "id" => o.id = Some(v.to_string()),
            "netdev" => o.netdev = Some(v.to_string()),
            "macaddr" | "mac" => {
                o.macaddr = Some(
                    v.parse()
                        .map_err(|_| "Parameter 'macaddr' expects a MAC address".to_string())?,
                )
            }
            "model" if matches!(v, "virtio" | "virtio-net-pci" | "virtio-net") => {}
            "model" => return Err(format!("Unsupported NIC model: {v}")),
            "vectors" => {
                v.parse::<u32>()
                    .map_err(|_| "Parameter 'vectors' expects uint32".to_string())?;
            }
            "socket" => socket = Some(PathBuf::from(v)),
            "server" => {
                o.server = match v {
                    "on" | "yes" | "true" => true,
                    "off" | "no" | "false" => false,
                    _ => return Err("Parameter 'server' expects 'on' or 'off'".to_string()),
                }
            }
            _ => return Err(format!("Invalid parameter '{k}'")),
        }
    }
    o.socket = socket.ok_or("Parameter 'socket' is missing")?;
    Ok(o)
}

/// `device_add`'s arguments as NIC options (QEMU's virtio-net-pci property names).
pub fn from_device_add(a: &netdevd_qapi::DeviceAddArgs) -> Result<NicOptions, QmpError> {
    if !matches!(
        a.driver.as_str(),
        "virtio-net-pci" | "virtio-net-device" | "virtio-net"
    ) {
        return Err(err(format!(
            "'{}' is not a valid device model name",
            a.driver
        )));
    }
    let macaddr = match &a.mac {
        Some(m) => Some(m.parse().map_err(|_| {
            err(format!(
                "Property '{}.mac' doesn't take value '{m}'",
                a.driver
            ))
        })?),
        None => None,
    };
    Ok(NicOptions {
        id: a.id.clone(),
        netdev: a.netdev.clone(),
        macaddr,
        socket: PathBuf::from(&a.socket),
        server: a.server.unwrap_or(true),
    })
}

/// Create NIC number `index` (for the default name and MAC).
pub fn add(reg: &mut Registry, o: &NicOptions, index: usize) -> Result<(), QmpError> {
    let name = o.id.clone().unwrap_or_else(|| format!("nic{index}"));
    if !netdevd_core::id_wellformed(&name) {
        return Err(err("Parameter 'id' expects an identifier"));
    }
    if !reg.net.find_all(&name).is_empty() {
        return Err(err(format!("Duplicate ID '{name}' for device")));
    }
    let mac = o
        .macaddr
        .unwrap_or(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56 + index as u8]));
    let nic = Nic::new(mac, format!("/machine/peripheral/{name}/virtio-backend"));
    let cfg = NicConfig {
        path: o.socket.clone(),
        server: o.server,
    };
    reg.add_nic(
        name.as_str(),
        "virtio-net-pci",
        nic,
        o.netdev.as_deref(),
        |r| VhostUserNic::new(r, cfg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_options() {
        let o =
            parse("id=n0,netdev=u,macaddr=52:54:00:aa:bb:cc,model=virtio,socket=/tmp/x").unwrap();
        assert_eq!(o.id.as_deref(), Some("n0"));
        assert_eq!(o.netdev.as_deref(), Some("u"));
        assert_eq!(o.macaddr.unwrap().to_string(), "52:54:00:aa:bb:cc");
        assert_eq!(o.socket, PathBuf::from("/tmp/x"));
        assert!(parse("netdev=u").unwrap_err().contains("socket"));
        assert!(parse("socket=/x,model=e1000")
            .unwrap_err()
            .contains("e1000"));
        assert!(parse("socket=/x,bogus=1").unwrap_err().contains("bogus"));
        assert!(parse("socket=/x,macaddr=zz")
            .unwrap_err()
            .contains("macaddr"));
    }
}
