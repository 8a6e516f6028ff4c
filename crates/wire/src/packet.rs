//! Checked views of the headers the user-mode stack speaks: Ethernet II, ARP (IPv4 over
//! Ethernet), IPv4 (options skipped, fragments refused), UDP, ICMP echo and TCP (over
//! either family, [`crate::ip::IpHeader`]). Each `parse` checks lengths before any field is
//! read; each `build` writes a whole frame.
//! RFC 826 (ARP), RFC 791 (IPv4), RFC 768 (UDP), RFC 792 (ICMP), RFC 9293 (TCP).

use std::net::Ipv4Addr;

use crate::checksum::{finish, pseudo_v4, sum};
use crate::ip::IpHeader;

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

impl Eth {
    pub fn parse(f: &[u8]) -> Option<(Eth, &[u8])> {
        let h = f.get(..ETH_HLEN)?;
        let mut dst = [0; 6];
        let mut src = [0; 6];
        dst.copy_from_slice(&h[0..6]);
        src.copy_from_slice(&h[6..12]);
        Some((
            Eth {
                dst,
                src,
                ethertype: u16::from_be_bytes([h[12], h[13]]),
            },
            &f[ETH_HLEN..],
        ))
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.ethertype.to_be_bytes());
    }
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

impl Arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    pub fn parse(p: &[u8]) -> Option<Arp> {
        let p = p.get(..28)?;
        if p[0..2] != [0, 1] || p[2..4] != [8, 0] || p[4] != 6 || p[5] != 4 {
            return None;
        }
        let mut sha = [0; 6];
        let mut tha = [0; 6];
        sha.copy_from_slice(&p[8..14]);
        tha.copy_from_slice(&p[18..24]);
        Some(Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sha,
            spa: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
            tha,
            tpa: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
        })
    }

    /// A whole Ethernet frame carrying this ARP packet, padded to 60 bytes.
    pub fn frame(&self, eth_dst: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::with_capacity(60);
        Eth {
            dst: eth_dst,
            src: self.sha,
            ethertype: ETHERTYPE_ARP,
        }
        .write(&mut f);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&self.op.to_be_bytes());
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa.octets());
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa.octets());
        f.resize(60, 0);
        f
    }
}

/// An IPv4 header (options are skipped over, not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
}

impl Ipv4 {
    /// Parse a packet; returns the header and the payload (cut to the total length).
    /// Fragments and bad header checksums are refused.
    pub fn parse(p: &[u8]) -> Option<(Ipv4, &[u8])> {
        let vihl = *p.first()?;
        if vihl >> 4 != 4 {
            return None;
        }
        let ihl = (vihl & 0xf) as usize * 4;
        let h = p.get(..ihl.max(20))?;
        if ihl < 20 {
            return None;
        }
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        if total < ihl || total > p.len() {
            return None;
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        if frag & 0x3fff != 0 {
            return None; // more fragments or an offset: not reassembled here
        }
        if crate::checksum::fold(sum(h, 0)) != 0xffff {
            return None;
        }
        Some((
            Ipv4 {
                src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
                dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
                proto: h[9],
                ttl: h[8],
                id: u16::from_be_bytes([h[4], h[5]]),
            },
            &p[ihl..total],
        ))
    }

    /// Write a 20-byte header for `payload_len` bytes, checksum included.
    pub fn write(&self, payload_len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        let total = (20 + payload_len) as u16;
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&[0x40, 0, self.ttl, self.proto, 0, 0]);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        let c = finish(sum(&out[start..start + 20], 0));
        out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
    }
}

/// A UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
}

impl Udp {
    /// Parse a datagram; returns the header and the payload. A non-zero checksum must
    /// verify.
    pub fn parse<'a>(ip: &Ipv4, p: &'a [u8]) -> Option<(Udp, &'a [u8])> {
        Self::parse_with(ip, p, true)
    }

    /// As [`Udp::parse`]; `verify: false` skips the checksum (a frame whose checksum the
    /// sender left to be filled in: virtio-net `NEEDS_CSUM`).
    pub fn parse_with<'a>(ip: &Ipv4, p: &'a [u8], verify: bool) -> Option<(Udp, &'a [u8])> {
        let h = p.get(..8)?;
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        if len < 8 || len > p.len() {
            return None;
        }
        let csum = u16::from_be_bytes([h[6], h[7]]);
        if verify && csum != 0 {
            let ps = pseudo_v4(&ip.src.octets(), &ip.dst.octets(), PROTO_UDP, len);
            if crate::checksum::fold(sum(&p[..len], ps)) != 0xffff {
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
}

/// A whole Ethernet + IPv4 + UDP frame.
pub fn udp_frame(eth: Eth, ip: Ipv4, udp: Udp, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + 28 + payload.len());
    eth.write(&mut f);
    ip.write(8 + payload.len(), &mut f);
    let u = f.len();
    f.extend_from_slice(&udp.src_port.to_be_bytes());
    f.extend_from_slice(&udp.dst_port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let ps = pseudo_v4(
        &ip.src.octets(),
        &ip.dst.octets(),
        PROTO_UDP,
        8 + payload.len(),
    );
    let mut c = finish(sum(&f[u..], ps));
    if c == 0 {
        c = 0xffff;
    }
    f[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// A whole Ethernet + IPv4 + ICMP frame (`icmp` is the ICMP message, checksum field zero).
pub fn icmp_frame(eth: Eth, ip: Ipv4, icmp: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + 20 + icmp.len());
    eth.write(&mut f);
    ip.write(icmp.len(), &mut f);
    let i = f.len();
    f.extend_from_slice(icmp);
    if icmp.len() >= 4 {
        f[i + 2..i + 4].copy_from_slice(&[0, 0]);
        let c = finish(sum(&f[i..], 0));
        f[i + 2..i + 4].copy_from_slice(&c.to_be_bytes());
    }
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_round_trip() {
        let eth = Eth {
            dst: [1; 6],
            src: [2; 6],
            ethertype: ETHERTYPE_IPV4,
        };
        let ip = Ipv4 {
            src: Ipv4Addr::new(10, 0, 2, 2),
            dst: Ipv4Addr::new(10, 0, 2, 15),
            proto: PROTO_UDP,
            ttl: 64,
            id: 7,
        };
        let f = udp_frame(
            eth,
            ip,
            Udp {
                src_port: 67,
                dst_port: 68,
            },
            b"hello",
        );
        let (e, rest) = Eth::parse(&f).unwrap();
        assert_eq!(e, eth);
        let (i, payload) = Ipv4::parse(rest).unwrap();
        assert_eq!(i, ip);
        let (u, data) = Udp::parse(&i, payload).unwrap();
        assert_eq!((u.src_port, u.dst_port, data), (67, 68, &b"hello"[..]));
        // A flipped bit fails the checksum.
        let mut bad = f.clone();
        bad[14 + 28] ^= 1;
        let (_, rest) = Eth::parse(&bad).unwrap();
        let (i, payload) = Ipv4::parse(rest).unwrap();
        assert!(Udp::parse(&i, payload).is_none());
    }

    #[test]
    fn arp_round_trip_and_truncation() {
        let a = Arp {
            op: Arp::REQUEST,
            sha: [2; 6],
            spa: Ipv4Addr::new(10, 0, 2, 15),
            tha: [0; 6],
            tpa: Ipv4Addr::new(10, 0, 2, 2),
        };
        let f = a.frame([0xff; 6]);
        assert_eq!(f.len(), 60);
        let (e, rest) = Eth::parse(&f).unwrap();
        assert_eq!(e.ethertype, ETHERTYPE_ARP);
        assert_eq!(Arp::parse(rest), Some(a));
        assert_eq!(Arp::parse(&rest[..27]), None);
        assert!(Ipv4::parse(&[0x45; 19]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Some((_, rest)) = Eth::parse(&data) {
                let _ = Arp::parse(rest);
                if let Some((ip, p)) = Ipv4::parse(rest) {
                    let _ = Udp::parse(&ip, p);
                    let _ = Tcp::parse(&ip, p);
                }
            }
        }
    }
}

/// A TCP header (RFC 793) with the options the user-mode stack uses (MSS, window scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10.
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
}

impl Tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    /// Parse a segment; returns the header and the payload. The checksum must verify.
    pub fn parse<'a>(ip: &Ipv4, p: &'a [u8]) -> Option<(Tcp, &'a [u8])> {
        Self::parse_with(ip, p, true)
    }

    /// As [`Tcp::parse`]; `verify: false` skips the checksum (virtio-net `NEEDS_CSUM`).
    pub fn parse_with<'a>(ip: &Ipv4, p: &'a [u8], verify: bool) -> Option<(Tcp, &'a [u8])> {
        Self::parse_ip(&IpHeader::V4(*ip), p, verify)
    }

    /// As [`Tcp::parse_with`], over IPv4 or IPv6.
    pub fn parse_ip<'a>(ip: &IpHeader, p: &'a [u8], verify: bool) -> Option<(Tcp, &'a [u8])> {
        let h = p.get(..20)?;
        let hlen = (h[12] >> 4) as usize * 4;
        if hlen < 20 || hlen > p.len() {
            return None;
        }
        let ps = ip.pseudo(PROTO_TCP, p.len());
        if verify && crate::checksum::fold(sum(p, ps)) != 0xffff {
            return None;
        }
        let mut t = Tcp {
            src_port: u16::from_be_bytes([h[0], h[1]]),
            dst_port: u16::from_be_bytes([h[2], h[3]]),
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            flags: h[13],
            window: u16::from_be_bytes([h[14], h[15]]),
            mss: None,
            wscale: None,
        };
        let mut opts = &p[20..hlen];
        while let Some((&kind, rest)) = opts.split_first() {
            match kind {
                0 => break,
                1 => {
                    opts = rest;
                    continue;
                }
                _ => {}
            }
            let (&len, _) = rest.split_first()?;
            let len = len as usize;
            if len < 2 || len > opts.len() {
                return None;
            }
            let val = &opts[2..len];
            match (kind, val.len()) {
                (2, 2) => t.mss = Some(u16::from_be_bytes([val[0], val[1]])),
                (3, 1) => t.wscale = Some(val[0].min(14)),
                _ => {}
            }
            opts = &opts[len..];
        }
        Some((t, &p[hlen..]))
    }
}

/// A whole Ethernet + IP + TCP frame (`eth`'s type is taken from `ip`'s family).
pub fn tcp_frame(eth: Eth, ip: impl Into<IpHeader>, tcp: &Tcp, payload: &[u8]) -> Vec<u8> {
    let ip = ip.into();
    let mut f = tcp_headers(eth, &ip, tcp, payload.len(), payload.len());
    f.extend_from_slice(payload);
    finish_tcp_frame(&mut f, &ip, false);
    f
}

/// Bytes of Ethernet + IPv4 + TCP headers without options.
pub const TCP_FRAME_HLEN: usize = ETH_HLEN + 20 + 20;
/// Bytes of Ethernet + IPv6 + TCP headers without options.
pub const TCP6_FRAME_HLEN: usize = ETH_HLEN + 40 + 20;

/// Bytes of Ethernet + `ip` + TCP headers without options: [`TCP_FRAME_HLEN`] or
/// [`TCP6_FRAME_HLEN`].
pub fn tcp_frame_hlen(ip: &IpHeader) -> usize {
    ETH_HLEN + ip.len() + 20
}

/// Turn `f`, whose bytes from [`tcp_frame_hlen`] on are the payload already in place, into
/// a whole frame: the headers are written over its first bytes (`tcp`'s options are not
/// written: data segments carry none), and the checksum is computed, or with `partial`
/// left as the pseudo-header sum for a receiver that finishes it (virtio-net `NEEDS_CSUM`
/// at `tcp_frame_hlen - 20` + 16). Short frames are padded to 60 bytes.
pub fn tcp_frame_in_place(
    f: &mut Vec<u8>,
    eth: Eth,
    ip: impl Into<IpHeader>,
    tcp: &Tcp,
    partial: bool,
) {
    let ip = ip.into();
    let hlen = tcp_frame_hlen(&ip);
    assert!(f.len() >= hlen);
    let plain = Tcp {
        mss: None,
        wscale: None,
        ..*tcp
    };
    let h = tcp_headers(eth, &ip, &plain, f.len() - hlen, 0);
    f[..hlen].copy_from_slice(&h);
    finish_tcp_frame(f, &ip, partial);
}

/// Ethernet, IP and TCP headers (options included) for `payload_len` bytes of payload,
/// the TCP checksum field zero; `room` more bytes are reserved behind them.
fn tcp_headers(eth: Eth, ip: &IpHeader, tcp: &Tcp, payload_len: usize, room: usize) -> Vec<u8> {
    let mut opts = Vec::new();
    if let Some(m) = tcp.mss {
        opts.extend_from_slice(&[2, 4]);
        opts.extend_from_slice(&m.to_be_bytes());
    }
    if let Some(w) = tcp.wscale {
        opts.extend_from_slice(&[1, 3, 3, w]);
    }
    let hlen = 20 + opts.len();
    let mut f = Vec::with_capacity(ETH_HLEN + ip.len() + hlen + room);
    Eth {
        ethertype: ip.ethertype(),
        ..eth
    }
    .write(&mut f);
    ip.write(hlen + payload_len, &mut f);
    f.extend_from_slice(&tcp.src_port.to_be_bytes());
    f.extend_from_slice(&tcp.dst_port.to_be_bytes());
    f.extend_from_slice(&tcp.seq.to_be_bytes());
    f.extend_from_slice(&tcp.ack.to_be_bytes());
    f.push(((hlen / 4) as u8) << 4);
    f.push(tcp.flags);
    f.extend_from_slice(&tcp.window.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&opts);
    f
}

/// Fill the TCP checksum of a frame whose segment runs to its end (whole, or with
/// `partial` only the pseudo-header sum), then pad it to 60 bytes.
fn finish_tcp_frame(f: &mut Vec<u8>, ip: &IpHeader, partial: bool) {
    let t = ETH_HLEN + ip.len();
    let ps = ip.pseudo(PROTO_TCP, f.len() - t);
    let c = if partial {
        crate::checksum::fold(ps)
    } else {
        finish(sum(&f[t..], ps))
    };
    f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    if f.len() < 60 {
        f.resize(60, 0);
    }
}

#[cfg(test)]
mod tcp_tests {
    use super::*;

    #[test]
    fn in_place_frame_equals_the_built_one() {
        let eth = Eth {
            dst: [1; 6],
            src: [2; 6],
            ethertype: ETHERTYPE_IPV4,
        };
        let ip = Ipv4 {
            src: Ipv4Addr::new(10, 0, 2, 2),
            dst: Ipv4Addr::new(10, 0, 2, 15),
            proto: PROTO_TCP,
            ttl: 64,
            id: 3,
        };
        let t = Tcp {
            src_port: 80,
            dst_port: 40000,
            seq: 7,
            ack: 9,
            flags: Tcp::ACK | Tcp::PSH,
            window: 1000,
            ..Tcp::default()
        };
        for payload in [&b"x"[..], &[9u8; 3001][..]] {
            let mut f = vec![0u8; TCP_FRAME_HLEN];
            f.extend_from_slice(payload);
            tcp_frame_in_place(&mut f, eth, ip, &t, false);
            assert_eq!(f, tcp_frame(eth, ip, &t, payload));
        }
    }

    #[test]
    fn tcp_over_ipv6_round_trips_in_place_and_whole() {
        let eth = Eth {
            dst: [1; 6],
            src: [2; 6],
            ethertype: ETHERTYPE_IPV4,
        };
        let ip = crate::ipv6::Ipv6 {
            src: "fec0::2".parse().unwrap(),
            dst: "fec0::15".parse().unwrap(),
            proto: PROTO_TCP,
            hop_limit: 64,
        };
        let t = Tcp {
            src_port: 80,
            dst_port: 40000,
            seq: 7,
            ack: 9,
            flags: Tcp::SYN | Tcp::ACK,
            window: 65535,
            mss: Some(1440),
            wscale: Some(7),
        };
        let f = tcp_frame(eth, ip, &t, b"");
        assert_eq!(u16::from_be_bytes([f[12], f[13]]), ETHERTYPE_IPV6);
        let (i, p) = crate::ipv6::Ipv6::parse(&f[ETH_HLEN..]).unwrap();
        let (t2, data) = Tcp::parse_ip(&i.into(), p, true).unwrap();
        assert_eq!(t2, t);
        assert!(data.is_empty());
        let data = Tcp {
            flags: Tcp::ACK | Tcp::PSH,
            ..t.without_options()
        };
        let mut g = vec![0u8; TCP6_FRAME_HLEN];
        g.extend_from_slice(&[5u8; 3001]);
        tcp_frame_in_place(&mut g, eth, ip, &data, false);
        assert_eq!(g, tcp_frame(eth, ip, &data, &[5u8; 3001]));
        let (i, p) = crate::ipv6::Ipv6::parse(&g[ETH_HLEN..]).unwrap();
        assert_eq!(
            Tcp::parse_ip(&i.into(), p, true).unwrap().1,
            &[5u8; 3001][..]
        );
        // A flipped bit fails the checksum over the IPv6 pseudo-header.
        g[TCP6_FRAME_HLEN + 7] ^= 1;
        let (i, p) = crate::ipv6::Ipv6::parse(&g[ETH_HLEN..]).unwrap();
        assert!(Tcp::parse_ip(&i.into(), p, true).is_none());
    }

    #[test]
    fn tcp_round_trip_with_options() {
        let eth = Eth {
            dst: [1; 6],
            src: [2; 6],
            ethertype: ETHERTYPE_IPV4,
        };
        let ip = Ipv4 {
            src: Ipv4Addr::new(10, 0, 2, 2),
            dst: Ipv4Addr::new(10, 0, 2, 15),
            proto: PROTO_TCP,
            ttl: 64,
            id: 1,
        };
        let t = Tcp {
            src_port: 80,
            dst_port: 40000,
            seq: 7,
            ack: 9,
            flags: Tcp::SYN | Tcp::ACK,
            window: 65535,
            mss: Some(1460),
            wscale: Some(7),
        };
        let f = tcp_frame(eth, ip, &t, b"");
        let (_, rest) = Eth::parse(&f).unwrap();
        let (i, p) = Ipv4::parse(rest).unwrap();
        let (t2, data) = Tcp::parse(&i, p).unwrap();
        assert_eq!(t2, t);
        assert!(data.is_empty());
        let f = tcp_frame(
            eth,
            ip,
            &Tcp {
                flags: Tcp::ACK | Tcp::PSH,
                ..t
            }
            .without_options(),
            b"payload",
        );
        let (_, rest) = Eth::parse(&f).unwrap();
        let (i, p) = Ipv4::parse(rest).unwrap();
        assert_eq!(Tcp::parse(&i, p).unwrap().1, b"payload");
    }
}

impl Tcp {
    /// The same header without options (data segments).
    pub fn without_options(self) -> Tcp {
        Tcp {
            mss: None,
            wscale: None,
            ..self
        }
    }
}
