//! The guest-facing side of a NIC: its receive filter, as virtio-net keeps it
//! (QEMU 7.2 `hw/net/virtio-net.c`: `virtio_net_handle_rx_mode`, `..._mac`, `..._vlan_table`,
//! `receive_filter`, `virtio_net_query_rxfilter`), and the `NIC_RX_FILTER_CHANGED` latch.
//!
//! The transport that lets a guest drive this state (vhost-user) comes with its own issue;
//! this module is the state and the rules, so `query-rx-filter` and the event behave as in
//! QEMU from the first NIC on.

use crate::frame::MacAddr;

/// Entries the MAC table holds in all (unicast + multicast), as virtio-net's MAC_TABLE_ENTRIES.
pub const MAC_TABLE_ENTRIES: usize = 64;

/// `normal` / `none` / `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    Normal,
    None,
    All,
}

/// What `query-rx-filter` reports for one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilterInfo {
    pub name: String,
    pub promiscuous: bool,
    pub multicast: RxState,
    pub unicast: RxState,
    pub vlan: RxState,
    /// QEMU reports the NOBCAST flag here (true = broadcasts are dropped); kept as QEMU does.
    pub broadcast_allowed: bool,
    pub multicast_overflow: bool,
    pub unicast_overflow: bool,
    pub main_mac: String,
    pub vlan_table: Vec<i64>,
    pub unicast_table: Vec<String>,
    pub multicast_table: Vec<String>,
}

/// A guest control command that changes the filter (virtio-net control queue class RX,
/// MAC and VLAN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxControl {
    Promisc(bool),
    AllMulti(bool),
    AllUni(bool),
    NoMulti(bool),
    NoUni(bool),
    NoBcast(bool),
    MacAddrSet(MacAddr),
    MacTableSet {
        unicast: Vec<MacAddr>,
        multicast: Vec<MacAddr>,
    },
    VlanAdd(u16),
    VlanDel(u16),
}

/// A NIC's filter state.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The MAC the NIC was created with (announce uses it).
    pub conf_mac: MacAddr,
    /// The current MAC (the guest may change it).
    pub mac: MacAddr,
    /// QOM-like path reported in NIC_RX_FILTER_CHANGED.
    pub path: String,
    promisc: bool,
    allmulti: bool,
    alluni: bool,
    nomulti: bool,
    nouni: bool,
    nobcast: bool,
    uni_overflow: bool,
    multi_overflow: bool,
    /// Guest order; reported reversed, as QEMU does.
    unicast: Vec<MacAddr>,
    multicast: Vec<MacAddr>,
    /// Whether the guest negotiated CTRL_VLAN; without it every VLAN passes.
    ctrl_vlan: bool,
    vlans: Box<[bool; 4096]>,
    /// The event latch: on until an event is emitted, re-armed by a query.
    notify: bool,
}

impl Nic {
    pub fn new(mac: MacAddr, path: String) -> Self {
        Nic {
            conf_mac: mac,
            mac,
            path,
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            uni_overflow: false,
            multi_overflow: false,
            unicast: Vec::new(),
            multicast: Vec::new(),
            ctrl_vlan: false,
            vlans: Box::new([true; 4096]),
            notify: true,
        }
    }

    /// The guest negotiated (or dropped) VIRTIO_NET_F_CTRL_VLAN: the table starts empty.
    pub fn set_ctrl_vlan(&mut self, on: bool) {
        self.ctrl_vlan = on;
        *self.vlans = [!on; 4096];
    }

    /// Apply a guest control command. Returns true when NIC_RX_FILTER_CHANGED must be
    /// emitted now (the latch was on; it is now off).
    pub fn control(&mut self, cmd: RxControl) -> bool {
        match cmd {
            RxControl::Promisc(v) => self.promisc = v,
            RxControl::AllMulti(v) => self.allmulti = v,
            RxControl::AllUni(v) => self.alluni = v,
            RxControl::NoMulti(v) => self.nomulti = v,
            RxControl::NoUni(v) => self.nouni = v,
            RxControl::NoBcast(v) => self.nobcast = v,
            RxControl::MacAddrSet(m) => self.mac = m,
            RxControl::MacTableSet { unicast, multicast } => {
                self.uni_overflow = unicast.len() > MAC_TABLE_ENTRIES;
                self.unicast = if self.uni_overflow {
                    Vec::new()
                } else {
                    unicast
                };
                let room = MAC_TABLE_ENTRIES - self.unicast.len();
                self.multi_overflow = multicast.len() > room;
                self.multicast = if self.multi_overflow {
                    Vec::new()
                } else {
                    multicast
                };
            }
            RxControl::VlanAdd(v) => {
                if let Some(b) = self.vlans.get_mut(v as usize) {
                    *b = true;
                }
            }
            RxControl::VlanDel(v) => {
                if let Some(b) = self.vlans.get_mut(v as usize) {
                    *b = false;
                }
            }
        }
        std::mem::replace(&mut self.notify, false)
    }

    /// `query-rx-filter`'s entry; re-arms the event latch.
    pub fn query(&mut self, name: &str) -> RxFilterInfo {
        self.notify = true;
        let state = |none: bool, all: bool| {
            if none {
                RxState::None
            } else if all {
                RxState::All
            } else {
                RxState::Normal
            }
        };
        let vlan_table: Vec<i64> = (0..4096i64)
            .rev()
            .filter(|&v| self.vlans[v as usize])
            .collect();
        let vlan = if !self.ctrl_vlan {
            RxState::All
        } else if vlan_table.is_empty() {
            RxState::None
        } else {
            RxState::Normal
        };
        RxFilterInfo {
            name: name.to_string(),
            promiscuous: self.promisc,
            multicast: state(self.nomulti, self.allmulti),
            unicast: state(self.nouni, self.alluni),
            vlan,
            broadcast_allowed: self.nobcast,
            multicast_overflow: self.multi_overflow,
            unicast_overflow: self.uni_overflow,
            main_mac: self.mac.to_string(),
            vlan_table,
            unicast_table: self.unicast.iter().rev().map(|m| m.to_string()).collect(),
            multicast_table: self.multicast.iter().rev().map(|m| m.to_string()).collect(),
        }
    }

    /// Whether the guest wants a frame with this Ethernet header (virtio-net's
    /// `receive_filter`). Frames shorter than a header are refused.
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        let Some(hdr) = frame.get(..14) else {
            return false;
        };
        let ethertype = u16::from_be_bytes([hdr[12], hdr[13]]);
        if ethertype == 0x8100 {
            let Some(tci) = frame.get(14..16) else {
                return false;
            };
            let vid = (u16::from_be_bytes([tci[0], tci[1]]) & 0xfff) as usize;
            if !self.vlans[vid] {
                return false;
            }
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&hdr[..6]);
        let dst = MacAddr(dst);
        if dst.is_broadcast() {
            return !self.nobcast;
        }
        if dst.is_multicast() {
            if self.nomulti {
                return false;
            }
            return self.allmulti || self.multi_overflow || self.multicast.contains(&dst);
        }
        if self.nouni {
            return false;
        }
        self.alluni || self.uni_overflow || dst == self.mac || self.unicast.contains(&dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reset_state_reports_like_qemu() {
        let mut n = Nic::new(mac("52:54:00:12:34:56"), "/p".into());
        let q = n.query("nic0");
        assert!(q.promiscuous);
        assert_eq!(q.vlan, RxState::All);
        assert_eq!(q.vlan_table.len(), 4096);
        assert_eq!(q.vlan_table[0], 4095);
        assert!(!q.broadcast_allowed);
        n.set_ctrl_vlan(true);
        assert_eq!(n.query("nic0").vlan, RxState::None);
        n.control(RxControl::VlanAdd(4));
        n.control(RxControl::VlanAdd(0));
        let q = n.query("nic0");
        assert_eq!(q.vlan_table, [4, 0]);
        assert_eq!(q.vlan, RxState::Normal);
    }

    #[test]
    fn event_latch_rearms_on_query() {
        let mut n = Nic::new(mac("52:54:00:12:34:56"), "/p".into());
        assert!(n.control(RxControl::Promisc(false)));
        assert!(!n.control(RxControl::Promisc(false)));
        n.query("x");
        assert!(n.control(RxControl::Promisc(false)));
    }

    #[test]
    fn tables_are_reversed_and_filter_works() {
        let mut n = Nic::new(mac("52:54:00:12:34:56"), "/p".into());
        n.control(RxControl::Promisc(false));
        n.control(RxControl::MacTableSet {
            unicast: vec![mac("52:54:00:00:00:01"), mac("52:54:00:00:00:02")],
            multicast: vec![mac("01:00:5e:00:00:01")],
        });
        let q = n.query("x");
        assert_eq!(q.unicast_table, ["52:54:00:00:00:02", "52:54:00:00:00:01"]);
        let frame = |dst: &str| {
            let mut f = mac(dst).0.to_vec();
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&[8, 0]);
            f
        };
        assert!(n.accepts(&frame("52:54:00:12:34:56")));
        assert!(n.accepts(&frame("52:54:00:00:00:02")));
        assert!(!n.accepts(&frame("52:54:00:00:00:03")));
        assert!(n.accepts(&frame("01:00:5e:00:00:01")));
        assert!(!n.accepts(&frame("01:00:5e:00:00:02")));
        assert!(n.accepts(&frame("ff:ff:ff:ff:ff:ff")));
        n.control(RxControl::NoBcast(true));
        assert!(!n.accepts(&frame("ff:ff:ff:ff:ff:ff")));
        assert!(n.query("x").broadcast_allowed);
        assert!(!n.accepts(&[0; 5]));
    }
}
