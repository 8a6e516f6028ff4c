//! IPv6 (RFC 8200), ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861) views and builders,
//! checked like the IPv4 ones in [`crate::packet`]: every read is bounds-checked, a view
//! that does not fit its bytes is `None`.
//!
//! - [`Ipv6::parse`] walks the extension-header chain (hop-by-hop, routing, destination
//!   options) to the upper-layer protocol; fragments and chains longer than
//!   [`MAX_EXT_HEADERS`] are refused (no reassembly, as for IPv4).
//! - [`Icmpv6::parse`] verifies the checksum over the pseudo-header.
//! - [`Ndp`] reads the Neighbor Discovery messages a host sends (router and neighbor
//!   solicitations, neighbor advertisements) with their options; [`RouterAdvert`] and
//!   [`neighbor_advert`] build what a router answers.
//! - [`udp6_parse`] and [`udp6_frame`]: UDP over IPv6 (checksum mandatory).

use std::net::Ipv6Addr;

use crate::checksum;
use crate::packet::{Eth, Udp, ETHERTYPE_IPV6, PROTO_UDP};

pub const IPV6_HLEN: usize = 40;
pub const PROTO_ICMPV6: u8 = 58;
/// Extension headers walked before giving up.
pub const MAX_EXT_HEADERS: usize = 8;

const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;

/// The fixed IPv6 header, with `proto` the upper layer after any extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol (after extension headers).
    pub proto: u8,
    pub hop_limit: u8,
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

impl Ipv6 {
    /// Parse an IPv6 packet: the header, its extension headers, and the upper-layer bytes
    /// (exactly the payload length; Ethernet padding after it is cut off).
    pub fn parse(p: &[u8]) -> Option<(Ipv6, &[u8])> {
        let h = p.get(..IPV6_HLEN)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        let mut next = h[6];
        let mut rest = p.get(IPV6_HLEN..IPV6_HLEN + len)?;
        for _ in 0..=MAX_EXT_HEADERS {
            match next {
                EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                    let ext_len = (*rest.get(1)? as usize + 1) * 8;
                    next = *rest.first()?;
                    rest = rest.get(ext_len..)?;
                }
                EXT_FRAGMENT => return None,
                proto => {
                    let ip = Ipv6 {
                        src: addr(&h[8..24]),
                        dst: addr(&h[24..40]),
                        proto,
                        hop_limit: h[7],
                    };
                    return Some((ip, rest));
                }
            }
        }
        None
    }

    /// Append the fixed header (no extension headers) for `payload_len` bytes after it.
    pub fn write(&self, payload_len: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        out.push(self.proto);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
    }
}

/// An ICMPv6 message: type, code, and the bytes after the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6<'a> {
    pub kind: u8,
    pub code: u8,
    /// Everything after the 4-byte type/code/checksum header.
    pub body: &'a [u8],
}

impl<'a> Icmpv6<'a> {
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;

    /// Parse an ICMPv6 message of the packet `ip`, verifying its checksum.
    pub fn parse(ip: &Ipv6, p: &'a [u8]) -> Option<Icmpv6<'a>> {
        if p.len() < 4 || ip.proto != PROTO_ICMPV6 {
            return None;
        }
        let acc = checksum::pseudo_v6(&ip.src.octets(), &ip.dst.octets(), PROTO_ICMPV6, p.len());
        if checksum::fold(checksum::sum(p, acc)) != 0xffff {
            return None;
        }
        Some(Icmpv6 {
            kind: p[0],
            code: p[1],
            body: &p[4..],
        })
    }
}

/// The Ethernet and IPv6 headers of a frame carrying `len` bytes of `proto`, with room
/// for them behind.
fn frame_start(eth_dst: [u8; 6], eth_src: [u8; 6], ip: Ipv6, proto: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + IPV6_HLEN + len);
    Eth {
        dst: eth_dst,
        src: eth_src,
        ethertype: ETHERTYPE_IPV6,
    }
    .write(&mut f);
    Ipv6 { proto, ..ip }.write(len, &mut f);
    f
}

/// A whole frame: Ethernet, IPv6 (hop limit `hop_limit`), and the ICMPv6 message `kind`,
/// `code`, `body` with its checksum.
pub fn icmpv6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ip: Ipv6,
    kind: u8,
    code: u8,
    body: &[u8],
) -> Vec<u8> {
    let len = 4 + body.len();
    let mut f = frame_start(eth_dst, eth_src, ip, PROTO_ICMPV6, len);
    let start = f.len();
    f.extend_from_slice(&[kind, code, 0, 0]);
    f.extend_from_slice(body);
    let acc = checksum::pseudo_v6(&ip.src.octets(), &ip.dst.octets(), PROTO_ICMPV6, len);
    let c = checksum::finish(checksum::sum(&f[start..], acc));
    f[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
    f
}

/// A UDP datagram of the IPv6 packet `ip`: header and payload. The checksum is mandatory
/// over IPv6 (RFC 8200 §8.1): zero or wrong is `None`, unless `verify` is false (a frame
/// whose checksum the sender left to be filled in).
pub fn udp6_parse<'a>(ip: &Ipv6, p: &'a [u8], verify: bool) -> Option<(Udp, &'a [u8])> {
    let h = p.get(..8)?;
    let len = u16::from_be_bytes([h[4], h[5]]) as usize;
    if len < 8 || len > p.len() {
        return None;
    }
    if verify {
        let acc = checksum::pseudo_v6(&ip.src.octets(), &ip.dst.octets(), PROTO_UDP, len);
        if h[6..8] == [0, 0] || checksum::fold(checksum::sum(&p[..len], acc)) != 0xffff {
            return None;
        }
    }
    Some((
        Udp {
            src_port: u16::from_be_bytes([h[0], h[1]]),
            dst_port: u16::from_be_bytes([h[2], h[3]]),
        },
        &p[8..len],
    ))
}

/// A whole Ethernet + IPv6 + UDP frame, checksum filled in.
pub fn udp6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ip: Ipv6,
    udp: Udp,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut f = frame_start(eth_dst, eth_src, ip, PROTO_UDP, len);
    let u = f.len();
    f.extend_from_slice(&udp.src_port.to_be_bytes());
    f.extend_from_slice(&udp.dst_port.to_be_bytes());
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let acc = checksum::pseudo_v6(&ip.src.octets(), &ip.dst.octets(), PROTO_UDP, len);
    let mut c = checksum::finish(checksum::sum(&f[u..], acc));
    if c == 0 {
        c = 0xffff;
    }
    f[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    f
}

/// The Ethernet address an IPv6 multicast address maps to (RFC 2464 §7).
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast address of `a` (RFC 4291 §2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// All-nodes multicast, ff02::1.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// NDP option types (RFC 4861 §4.6, RFC 8106).
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
const OPT_PREFIX: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;
const OPT_DNSSL: u8 = 31;

/// A Neighbor Discovery message from a host, its options checked (each of non-zero length
/// and inside the message, RFC 4861 §6.1/§7.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ndp {
    RouterSolicit {
        source_ll: Option<[u8; 6]>,
    },
    NeighborSolicit {
        target: Ipv6Addr,
        source_ll: Option<[u8; 6]>,
    },
    NeighborAdvert {
        target: Ipv6Addr,
        target_ll: Option<[u8; 6]>,
    },
}

impl Ndp {
    /// Read an NDP message. RFC 4861 requires hop limit 255 and code 0 (no router beyond
    /// the link can have sent it); anything else is `None`.
    pub fn parse(ip: &Ipv6, m: &Icmpv6) -> Option<Ndp> {
        if ip.hop_limit != 255 || m.code != 0 {
            return None;
        }
        let (fixed, opts_at) = match m.kind {
            Icmpv6::ROUTER_SOLICIT => (4, 4),
            Icmpv6::NEIGHBOR_SOLICIT | Icmpv6::NEIGHBOR_ADVERT => (20, 20),
            _ => return None,
        };
        if m.body.len() < fixed {
            return None;
        }
        let ll = link_layer_options(&m.body[opts_at..])?;
        Some(match m.kind {
            Icmpv6::ROUTER_SOLICIT => Ndp::RouterSolicit { source_ll: ll.0 },
            Icmpv6::NEIGHBOR_SOLICIT => {
                let target = addr(&m.body[4..20]);
                if target.is_multicast() {
                    return None;
                }
                Ndp::NeighborSolicit {
                    target,
                    source_ll: ll.0,
                }
            }
            _ => Ndp::NeighborAdvert {
                target: addr(&m.body[4..20]),
                target_ll: ll.1,
            },
        })
    }
}

/// A link-layer address option's value, if the option was there.
type LinkLayer = Option<[u8; 6]>;

/// The source and target link-layer address options among `opts`; `None` if an option is
/// malformed.
fn link_layer_options(mut opts: &[u8]) -> Option<(LinkLayer, LinkLayer)> {
    let (mut src, mut tgt) = (None, None);
    while !opts.is_empty() {
        let kind = *opts.first()?;
        let len = *opts.get(1)? as usize * 8;
        if len == 0 {
            return None;
        }
        let o = opts.get(..len)?;
        if len == 8 && (kind == OPT_SOURCE_LL || kind == OPT_TARGET_LL) {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&o[2..8]);
            if kind == OPT_SOURCE_LL {
                src = Some(mac);
            } else {
                tgt = Some(mac);
            }
        }
        opts = &opts[len..];
    }
    Some((src, tgt))
}

/// The body of a Neighbor Advertisement for `target`, solicited (S flag), as a router
/// (R flag), overriding (O flag), with the target link-layer address `mac`.
pub fn neighbor_advert(target: Ipv6Addr, mac: [u8; 6], solicited: bool) -> Vec<u8> {
    let flags = 0x80 | 0x20 | if solicited { 0x40 } else { 0 };
    let mut b = vec![flags, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[OPT_TARGET_LL, 1]);
    b.extend_from_slice(&mac);
    b
}

/// A Router Advertisement (RFC 4861 §4.2) with prefix information (on-link, autonomous),
/// MTU, RDNSS and DNSSL (RFC 8106) options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterAdvert {
    pub hop_limit: u8,
    /// The O flag: other configuration (DNS) is available by stateless DHCPv6.
    pub other_config: bool,
    /// Router lifetime, seconds (0: not a default router).
    pub router_lifetime: u16,
    pub source_ll: [u8; 6],
    pub mtu: u32,
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
    /// Recursive DNS servers and their lifetime in seconds (nothing sent when empty).
    pub rdnss: Vec<Ipv6Addr>,
    pub dns_lifetime: u32,
    /// DNS search list (names as given; a name with an empty or over-long label is left
    /// out).
    pub dnssl: Vec<String>,
}

impl RouterAdvert {
    /// The ICMPv6 body (after type, code and checksum).
    pub fn body(&self) -> Vec<u8> {
        let mut b = vec![self.hop_limit, if self.other_config { 0x40 } else { 0 }];
        b.extend_from_slice(&self.router_lifetime.to_be_bytes());
        b.extend_from_slice(&[0; 8]); // reachable time, retrans timer: unspecified
        b.extend_from_slice(&[OPT_SOURCE_LL, 1]);
        b.extend_from_slice(&self.source_ll);
        b.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
        b.extend_from_slice(&self.mtu.to_be_bytes());
        b.extend_from_slice(&[OPT_PREFIX, 4, self.prefix_len, 0xc0]); // L and A flags
        b.extend_from_slice(&self.valid_lifetime.to_be_bytes());
        b.extend_from_slice(&self.preferred_lifetime.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&mask6(self.prefix, self.prefix_len).octets());
        if !self.rdnss.is_empty() {
            b.extend_from_slice(&[OPT_RDNSS, (1 + 2 * self.rdnss.len()) as u8, 0, 0]);
            b.extend_from_slice(&self.dns_lifetime.to_be_bytes());
            for a in &self.rdnss {
                b.extend_from_slice(&a.octets());
            }
        }
        let names = dns_names(&self.dnssl);
        if !names.is_empty() {
            let total = 8 + names.len();
            let padded = total.div_ceil(8) * 8;
            b.extend_from_slice(&[OPT_DNSSL, (padded / 8) as u8, 0, 0]);
            b.extend_from_slice(&self.dns_lifetime.to_be_bytes());
            b.extend_from_slice(&names);
            b.resize(b.len() + padded - total, 0);
        }
        b
    }
}

/// `a` with all but its first `len` bits cleared.
pub fn mask6(a: Ipv6Addr, len: u8) -> Ipv6Addr {
    let len = u32::from(len.min(128));
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    Ipv6Addr::from(u128::from(a) & mask)
}

/// Domain names in DNS wire format (RFC 1035 §3.1, no compression), one after another,
/// at most 255 option bytes' worth (an option's length is a byte of 8-byte units).
pub fn dns_names(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        let mut enc = Vec::new();
        let labels: Vec<&str> = n.trim_end_matches('.').split('.').collect();
        if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
            continue;
        }
        for l in labels {
            enc.push(l.len() as u8);
            enc.extend_from_slice(l.as_bytes());
        }
        enc.push(0);
        if enc.len() > 255 || out.len() + enc.len() > 255 * 8 - 8 {
            continue;
        }
        out.extend_from_slice(&enc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2);
    const GUEST: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);

    fn packet(f: &[u8]) -> (Ipv6, Vec<u8>) {
        let (eth, rest) = Eth::parse(f).unwrap();
        assert_eq!(eth.ethertype, ETHERTYPE_IPV6);
        let (ip, p) = Ipv6::parse(rest).unwrap();
        (ip, p.to_vec())
    }

    #[test]
    fn icmpv6_round_trip_and_checksum() {
        let ip = Ipv6 {
            src: HOST,
            dst: GUEST,
            proto: PROTO_ICMPV6,
            hop_limit: 64,
        };
        let f = icmpv6_frame(
            [2; 6],
            [4; 6],
            ip,
            Icmpv6::ECHO_REPLY,
            0,
            b"\x00\x01\x00\x02ping",
        );
        let (got, p) = packet(&f);
        assert_eq!(got, ip);
        let m = Icmpv6::parse(&got, &p).unwrap();
        assert_eq!(
            (m.kind, m.code, m.body),
            (129, 0, &b"\x00\x01\x00\x02ping"[..])
        );
        let mut bad = p.clone();
        bad[6] ^= 1;
        assert!(Icmpv6::parse(&got, &bad).is_none());
    }

    #[test]
    fn udp6_round_trip_and_mandatory_checksum() {
        let ip = Ipv6 {
            src: GUEST,
            dst: HOST,
            proto: PROTO_UDP,
            hop_limit: 64,
        };
        let udp = Udp {
            src_port: 5353,
            dst_port: 53,
        };
        let f = udp6_frame([2; 6], [4; 6], ip, udp, b"query");
        let (got, p) = packet(&f);
        assert_eq!(got.proto, PROTO_UDP);
        assert_eq!(udp6_parse(&got, &p, true), Some((udp, &b"query"[..])));
        let mut zero = p.clone();
        zero[6..8].copy_from_slice(&[0, 0]);
        assert!(udp6_parse(&got, &zero, true).is_none());
        assert!(udp6_parse(&got, &zero, false).is_some());
        let mut bad = p.clone();
        bad[9] ^= 1;
        assert!(udp6_parse(&got, &bad, true).is_none());
        assert!(udp6_parse(&got, &p[..7], false).is_none());
    }

    #[test]
    fn extension_headers_are_walked_and_fragments_refused() {
        let ip = Ipv6 {
            src: GUEST,
            dst: HOST,
            proto: 17,
            hop_limit: 64,
        };
        // hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP
        let mut payload = vec![EXT_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[17, 1, 1, 12]);
        payload.extend_from_slice(&[0; 12]);
        payload.extend_from_slice(b"udp bytes");
        let mut p = Vec::new();
        Ipv6 {
            proto: EXT_HOP_BY_HOP,
            ..ip
        }
        .write(payload.len(), &mut p);
        p.extend_from_slice(&payload);
        p.extend_from_slice(&[0; 6]); // Ethernet padding
        let (got, rest) = Ipv6::parse(&p).unwrap();
        assert_eq!(got.proto, 17);
        assert_eq!(rest, b"udp bytes");
        // A fragment header anywhere in the chain: refused.
        p[40 + 8] = EXT_FRAGMENT;
        assert!(Ipv6::parse(&p).is_none());
        // A chain running past the payload: refused.
        let mut q = Vec::new();
        Ipv6 {
            proto: EXT_ROUTING,
            ..ip
        }
        .write(8, &mut q);
        q.extend_from_slice(&[EXT_ROUTING, 9, 0, 0, 0, 0, 0, 0]);
        assert!(Ipv6::parse(&q).is_none());
        // Too long a chain.
        let mut r = Vec::new();
        let n = MAX_EXT_HEADERS + 2;
        Ipv6 {
            proto: EXT_DEST_OPTS,
            ..ip
        }
        .write(n * 8, &mut r);
        for _ in 0..n {
            r.extend_from_slice(&[EXT_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert!(Ipv6::parse(&r).is_none());
        // Not version 6, short, payload length beyond the bytes.
        assert!(Ipv6::parse(&p[..39]).is_none());
        let mut v4 = p.clone();
        v4[0] = 0x45;
        assert!(Ipv6::parse(&v4).is_none());
        let mut long = p.clone();
        long[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert!(Ipv6::parse(&long).is_none());
    }

    #[test]
    fn ndp_messages_read_and_built() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let ns_ip = Ipv6 {
            src: GUEST,
            dst: solicited_node(HOST),
            proto: PROTO_ICMPV6,
            hop_limit: 255,
        };
        let mut body = vec![0; 4];
        body.extend_from_slice(&HOST.octets());
        body.extend_from_slice(&[OPT_SOURCE_LL, 1]);
        body.extend_from_slice(&mac);
        let f = icmpv6_frame(
            multicast_mac(ns_ip.dst),
            mac,
            ns_ip,
            Icmpv6::NEIGHBOR_SOLICIT,
            0,
            &body,
        );
        let (ip, p) = packet(&f);
        let m = Icmpv6::parse(&ip, &p).unwrap();
        assert_eq!(
            Ndp::parse(&ip, &m),
            Some(Ndp::NeighborSolicit {
                target: HOST,
                source_ll: Some(mac)
            })
        );
        assert_eq!(
            solicited_node(HOST),
            "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(solicited_node(HOST)),
            [0x33, 0x33, 0xff, 0, 0, 2]
        );
        // Hop limit below 255, a zero-length option, a truncated option: refused.
        let low = Ipv6 {
            hop_limit: 64,
            ..ip
        };
        assert!(Ndp::parse(&low, &m).is_none());
        let mut zero = body.clone();
        zero[21] = 0;
        let zm = Icmpv6 { body: &zero, ..m };
        assert!(Ndp::parse(&ip, &zm).is_none());
        let cut = Icmpv6 {
            body: &body[..24],
            ..m
        };
        assert!(Ndp::parse(&ip, &cut).is_none());
        // The advertisement we build reads back.
        let na = neighbor_advert(HOST, [0x52, 0x55, 10, 0, 2, 2], true);
        assert_eq!(na[0], 0xe0);
        let nam = Icmpv6 {
            kind: Icmpv6::NEIGHBOR_ADVERT,
            code: 0,
            body: &na,
        };
        assert_eq!(
            Ndp::parse(&ip, &nam),
            Some(Ndp::NeighborAdvert {
                target: HOST,
                target_ll: Some([0x52, 0x55, 10, 0, 2, 2])
            })
        );
    }

    #[test]
    fn router_advert_layout() {
        let ra = RouterAdvert {
            hop_limit: 64,
            other_config: true,
            router_lifetime: 1800,
            source_ll: [0x52, 0x55, 10, 0, 2, 2],
            mtu: 1500,
            prefix: "fec0::1234".parse().unwrap(),
            prefix_len: 64,
            valid_lifetime: 86400,
            preferred_lifetime: 14400,
            rdnss: vec!["fec0::3".parse().unwrap()],
            dns_lifetime: 1800,
            dnssl: vec!["example.test".into(), "bad..name".into()],
        };
        let b = ra.body();
        assert_eq!(&b[..4], &[64, 0x40, 0x07, 0x08]);
        let opts = &b[12..];
        assert_eq!(&opts[..2], &[OPT_SOURCE_LL, 1]);
        assert_eq!(&opts[8..16], &[OPT_MTU, 1, 0, 0, 0, 0, 0x05, 0xdc]);
        let pi = &opts[16..48];
        assert_eq!(&pi[..4], &[OPT_PREFIX, 4, 64, 0xc0]);
        assert_eq!(&pi[16..], &"fec0::".parse::<Ipv6Addr>().unwrap().octets());
        let rd = &opts[48..72];
        assert_eq!(&rd[..2], &[OPT_RDNSS, 3]);
        assert_eq!(&rd[8..], &"fec0::3".parse::<Ipv6Addr>().unwrap().octets());
        let sl = &opts[72..];
        assert_eq!(sl[0], OPT_DNSSL);
        assert_eq!(sl.len(), sl[1] as usize * 8);
        assert_eq!(&sl[8..22], b"\x07example\x04test\x00");
        assert!(sl[22..].iter().all(|&x| x == 0));
    }
}
