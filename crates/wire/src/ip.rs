//! The IP header of a transport segment, either family: what TCP needs from its network
//! layer (the pseudo-header sum, the header's length and its Ethernet type, writing it), so
//! that one TCP parser and one TCP frame builder ([`crate::packet::Tcp`]) serve IPv4 and
//! IPv6 alike.

use std::net::IpAddr;

use crate::checksum::{pseudo_v4, pseudo_v6};
use crate::ipv6::{Ipv6, IPV6_HLEN};
use crate::packet::{Ipv4, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// An IPv4 or IPv6 header (the IPv6 one without extension headers when written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpHeader {
    V4(Ipv4),
    V6(Ipv6),
}

impl IpHeader {
    pub fn src(&self) -> IpAddr {
        match self {
            IpHeader::V4(h) => h.src.into(),
            IpHeader::V6(h) => h.src.into(),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match self {
            IpHeader::V4(h) => h.dst.into(),
            IpHeader::V6(h) => h.dst.into(),
        }
    }

    /// The length of the header as [`IpHeader::write`] writes it.
    pub fn len(&self) -> usize {
        match self {
            IpHeader::V4(_) => 20,
            IpHeader::V6(_) => IPV6_HLEN,
        }
    }

    /// Never empty: a header has its fixed part.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn ethertype(&self) -> u16 {
        match self {
            IpHeader::V4(_) => ETHERTYPE_IPV4,
            IpHeader::V6(_) => ETHERTYPE_IPV6,
        }
    }

    /// The pseudo-header sum for `len` bytes of upper-layer protocol `proto`.
    pub fn pseudo(&self, proto: u8, len: usize) -> u64 {
        match self {
            IpHeader::V4(h) => pseudo_v4(&h.src.octets(), &h.dst.octets(), proto, len),
            IpHeader::V6(h) => pseudo_v6(&h.src.octets(), &h.dst.octets(), proto, len),
        }
    }

    /// Append the header for `payload_len` bytes after it.
    pub fn write(&self, payload_len: usize, out: &mut Vec<u8>) {
        match self {
            IpHeader::V4(h) => h.write(payload_len, out),
            IpHeader::V6(h) => h.write(payload_len, out),
        }
    }
}

impl From<Ipv4> for IpHeader {
    fn from(h: Ipv4) -> IpHeader {
        IpHeader::V4(h)
    }
}

impl From<Ipv6> for IpHeader {
    fn from(h: Ipv6) -> IpHeader {
        IpHeader::V6(h)
    }
}
