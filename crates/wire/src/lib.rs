//! Frame formats: the virtio-net header ([`VirtioNetHdr`]), the Internet checksum
//! ([`checksum`]), and finishing offloaded frames in software ([`gso`]): filling a partial
//! checksum and cutting a TCP segmentation-offload frame into MSS-sized frames, for
//! receivers that cannot take offloaded frames. Checked views of Ethernet, ARP, IPv4, UDP,
//! TCP ([`packet`]; TCP over either family through [`ip::IpHeader`]) and of IPv6, ICMPv6
//! and Neighbor Discovery ([`ipv6`]). The L2TPv3 data header of a static pseudowire
//! ([`l2tpv3`]).
//!
//! No I/O, no `unsafe`; every view checks lengths first.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod gso;
pub mod ip;
pub mod ipv6;
pub mod l2tpv3;
pub mod packet;

/// The virtio-net header (`struct virtio_net_hdr`, little-endian, 10 bytes; 12 with
/// `num_buffers`): checksum and segmentation offload metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `NEEDS_CSUM` (1), `DATA_VALID` (2).
    pub flags: u8,
    /// `GSO_NONE` (0), `TCPV4` (1), `UDP` (3), `TCPV6` (4), `UDP_L4` (5); `ECN` bit 0x80.
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    pub const LEN: usize = 10;
    pub const NEEDS_CSUM: u8 = 1;
    pub const DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    pub const GSO_ECN: u8 = 0x80;

    /// True when a receiver must do work (checksum or segmentation) before the frame is a
    /// plain Ethernet frame.
    pub fn needs_work(&self) -> bool {
        self.flags & Self::NEEDS_CSUM != 0 || self.is_gso()
    }

    /// True when the frame is a segmentation-offload frame (any GSO type but none).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// Parse the first 10 bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<VirtioNetHdr> {
        let b = b.get(..Self::LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The 10 bytes of this header.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHdr::parse(&h.to_bytes()), Some(h));
        assert!(h.needs_work());
        assert!(!VirtioNetHdr::default().needs_work());
        assert!(!VirtioNetHdr {
            flags: VirtioNetHdr::DATA_VALID,
            ..Default::default()
        }
        .needs_work());
        assert_eq!(VirtioNetHdr::parse(&[0; 9]), None);
    }
}
