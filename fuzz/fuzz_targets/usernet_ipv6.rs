//! IPv6 from the guest: the IPv6 view and its extension-header chains on raw bytes, NDP
//! messages read directly (no checksum to get right), the stateless DHCPv6 server on the
//! raw bytes, and the stack fed well-formed IPv6
//! frames around the input: any next header with the input as its chain, and ICMPv6 of
//! any type with a correct checksum (NDP with hop limit 255, echo, the rest), and TCP over
//! IPv6 with correct checksums (a SYN opening a flow, then the input as a segment of it,
//! options and all). Nothing may panic, and the stack answers at most one frame per ICMPv6
//! message.
#![no_main]

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use netdevd_usernet::stack::FlowId;
use netdevd_usernet::{Config, HostIo, Stack};
use netdevd_wire::ipv6::{icmpv6_frame, Icmpv6, Ipv6, Ndp, PROTO_ICMPV6};
use netdevd_wire::checksum;
use netdevd_wire::packet::{tcp_frame, Eth, Tcp, ETHERTYPE_IPV6, PROTO_TCP};

struct Host;

impl HostIo for Host {
    fn udp_open(&mut self, _id: FlowId, _t: SocketAddr) -> io::Result<()> {
        Ok(())
    }
    fn udp_send(&mut self, _id: FlowId, _d: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn udp_close(&mut self, _id: FlowId) {}
    fn icmp_open(&mut self, _id: FlowId, _t: std::net::IpAddr) -> io::Result<()> {
        Ok(())
    }
    fn tcp_connect(&mut self, _id: FlowId, _t: SocketAddr) -> io::Result<bool> {
        Ok(true)
    }
    fn tcp_send(&mut self, _id: FlowId, d: &[u8]) -> io::Result<usize> {
        Ok(d.len())
    }
    fn tcp_peek(&mut self, _: FlowId, _: usize, _: &mut Vec<u8>, _: usize) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn tcp_consume(&mut self, _id: FlowId, _n: usize) {}
    fn tcp_shutdown(&mut self, _id: FlowId) {}
    fn tcp_close(&mut self, _id: FlowId, _abort: bool) {}
    fn tcp_command(&mut self, _id: FlowId, _argv: &[String]) -> io::Result<()> {
        Ok(())
    }
}

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GW_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0, 2, 2];

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut host = Host;
    let mut s = Stack::new(Config::default());
    let _ = netdevd_usernet::dhcpv6::reply(&Config::default(), GW_MAC, data);
    // Raw bytes: as an IPv6 packet, and behind an Ethernet header into the stack.
    if let Some((ip, rest)) = Ipv6::parse(data) {
        let _ = Icmpv6::parse(&ip, rest);
    }
    let mut raw = Vec::with_capacity(14 + data.len());
    Eth {
        dst: GW_MAC,
        src: GUEST_MAC,
        ethertype: ETHERTYPE_IPV6,
    }
    .write(&mut raw);
    raw.extend_from_slice(data);
    s.from_guest(&raw, now, &mut host);
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let src = if first & 1 == 0 {
        "fec0::5054:ff:fe12:3456".parse().unwrap()
    } else {
        Ipv6Addr::UNSPECIFIED
    };
    let dst: Ipv6Addr = match first >> 1 & 3 {
        0 => "fec0::2".parse().unwrap(),
        1 => "ff02::1:ff00:2".parse().unwrap(),
        2 => "ff02::2".parse().unwrap(),
        _ => "2001:db8::1".parse().unwrap(),
    };
    // A valid fixed header with the input as the extension-header chain of next header
    // `rest[0]`.
    if let Some((&next, chain)) = rest.split_first() {
        let mut f = Vec::new();
        Eth {
            dst: GW_MAC,
            src: GUEST_MAC,
            ethertype: ETHERTYPE_IPV6,
        }
        .write(&mut f);
        Ipv6 {
            src,
            dst,
            proto: next,
            hop_limit: 255,
        }
        .write(chain.len(), &mut f);
        f.extend_from_slice(chain);
        s.from_guest(&f, now, &mut host);
    }
    // ICMPv6 of the type in `rest[0]`, code `rest[1]`, with a correct checksum.
    if rest.len() >= 2 {
        let ip = Ipv6 {
            src,
            dst,
            proto: PROTO_ICMPV6,
            hop_limit: if first & 8 == 0 { 255 } else { 64 },
        };
        let m = Icmpv6 {
            kind: rest[0],
            code: rest[1],
            body: &rest[2..],
        };
        let _ = Ndp::parse(&ip, &m);
        while s.pop_frame().is_some() {}
        let f = icmpv6_frame(GW_MAC, GUEST_MAC, ip, rest[0], rest[1], &rest[2..]);
        s.from_guest(&f, now, &mut host);
        let mut answers = 0;
        while s.pop_frame().is_some() {
            answers += 1;
        }
        assert!(answers <= 1, "{answers} frames for one ICMPv6 message");
    }
    // TCP over IPv6: a SYN from the input's ports, then the input as the next segment of
    // the flow (its checksum made right), then the timers.
    if rest.len() >= 20 {
        let ip = Ipv6 {
            src,
            dst,
            proto: PROTO_TCP,
            hop_limit: 64,
        };
        let eth = Eth {
            dst: GW_MAC,
            src: GUEST_MAC,
            ethertype: ETHERTYPE_IPV6,
        };
        let syn = Tcp {
            src_port: u16::from_be_bytes([rest[0], rest[1]]),
            dst_port: u16::from_be_bytes([rest[2], rest[3]]),
            seq: u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]).wrapping_sub(1),
            flags: Tcp::SYN,
            window: 65535,
            mss: Some(1440),
            wscale: Some(rest[19] & 15),
            ..Tcp::default()
        };
        s.from_guest(&tcp_frame(eth, ip, &syn, &[]), now, &mut host);
        let mut seg = rest.to_vec();
        seg[16] = 0;
        seg[17] = 0;
        let acc = checksum::pseudo_v6(&src.octets(), &dst.octets(), PROTO_TCP, seg.len());
        let c = checksum::finish(checksum::sum(&seg, acc));
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::new();
        eth.write(&mut f);
        ip.write(seg.len(), &mut f);
        f.extend_from_slice(&seg);
        s.from_guest(&f, now, &mut host);
        while s.pop_frame().is_some() {}
    }
    s.timers(now + std::time::Duration::from_secs(120), &mut host);
});
