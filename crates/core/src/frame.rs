//! Frames and the offload metadata that travels with them.

/// The virtio-net header: checksum and segmentation offload metadata. A frame carries one
/// when its sender had it (a tap with `vnet_hdr`, a virtio-net NIC); receivers that cannot
/// take offloaded frames get them finished in software by the core.
pub use netdevd_wire::VirtioNetHdr;

/// The largest frame a client takes, as QEMU's NET_BUFSIZE (4096 + 65536).
pub const MAX_FRAME: usize = 4096 + 65536;

/// An Ethernet frame (no FCS) with optional offload metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: Vec<u8>,
    pub offload: Option<VirtioNetHdr>,
}

impl Frame {
    pub fn new(data: Vec<u8>) -> Self {
        Frame {
            data,
            offload: None,
        }
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// `invalid syntax for ethernet address` in QEMU's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid syntax for ethernet address")]
pub struct MacParseError;

impl std::str::FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or(MacParseError)?;
            if p.is_empty() || p.len() > 2 {
                return Err(MacParseError);
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| MacParseError)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError);
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:12:34:56");
        assert!("52:54:00:12:34".parse::<MacAddr>().is_err());
        assert!("52:54:00:12:34:56:78".parse::<MacAddr>().is_err());
        assert!("zz:54:00:12:34:56".parse::<MacAddr>().is_err());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
    }
}
