//! Unit tests of the stack, against a fake [`HostIo`] that records what was opened and sent.

use super::*;
use crate::tcp::{Phase, OUR_WSCALE, RTO_MIN};
use std::collections::BTreeMap;

/// A fake host: remembers what was opened and sent; serves `inbox` to reads.
#[derive(Default)]
struct FakeHost {
    open: BTreeMap<FlowId, SocketAddr>,
    sent: Vec<(FlowId, Vec<u8>)>,
    closed: Vec<FlowId>,
    inbox: Vec<u8>,
    eof: bool,
    shut: Vec<FlowId>,
    aborted: Vec<FlowId>,
}

impl HostIo for FakeHost {
    fn udp_open(&mut self, id: FlowId, target: SocketAddr) -> io::Result<()> {
        self.open.insert(id, target);
        Ok(())
    }
    fn udp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<()> {
        self.sent.push((id, data.to_vec()));
        Ok(())
    }
    fn icmp_open(&mut self, id: FlowId, target: IpAddr) -> io::Result<()> {
        self.open.insert(id, SocketAddr::from((target, 0)));
        Ok(())
    }
    fn udp_close(&mut self, id: FlowId) {
        self.open.remove(&id);
        self.closed.push(id);
    }
    fn tcp_connect(&mut self, id: FlowId, target: SocketAddr) -> io::Result<bool> {
        self.open.insert(id, target);
        Ok(false)
    }
    fn tcp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<usize> {
        self.sent.push((id, data.to_vec()));
        Ok(data.len())
    }
    fn tcp_peek(
        &mut self,
        _id: FlowId,
        skip: usize,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        if skip >= self.inbox.len() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = max.min(self.inbox.len() - skip);
        buf.extend_from_slice(&self.inbox[skip..skip + n]);
        Ok(n)
    }
    fn tcp_consume(&mut self, _id: FlowId, n: usize) {
        self.inbox.drain(..n.min(self.inbox.len()));
    }
    fn tcp_shutdown(&mut self, id: FlowId) {
        self.shut.push(id);
    }
    fn tcp_close(&mut self, id: FlowId, abort: bool) {
        self.open.remove(&id);
        self.closed.push(id);
        if abort {
            self.aborted.push(id);
        }
    }
    fn tcp_command(&mut self, id: FlowId, argv: &[String]) -> io::Result<()> {
        self.open
            .insert(id, SocketAddr::from(([0, 0, 0, 0], argv.len() as u16)));
        Ok(())
    }
}

const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn guest_udp(dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let ip = Ipv4 {
        src: Ipv4Addr::new(10, 0, 2, 15),
        dst,
        proto: PROTO_UDP,
        ttl: 64,
        id: 1,
    };
    udp_frame(
        Eth {
            dst: GATEWAY_MAC,
            src: GUEST,
            ethertype: ETHERTYPE_IPV4,
        },
        ip,
        Udp {
            src_port: sport,
            dst_port: dport,
        },
        data,
    )
}

/// An IPv4 stack (IPv6 off: no router advertisements among the frames and deadlines the
/// IPv4 tests look at).
fn stack() -> Stack {
    Stack::new(Config {
        dns_upstream: vec!["127.0.0.2:53".parse().unwrap()],
        ipv6: false,
        ..Config::default()
    })
}

#[test]
fn arp_for_gateway_and_dns_only() {
    let mut s = stack();
    let mut h = FakeHost::default();
    for (tpa, answered) in [
        ([10, 0, 2, 2], true),
        ([10, 0, 2, 3], true),
        ([10, 0, 2, 9], false),
    ] {
        let req = Arp {
            op: Arp::REQUEST,
            sha: GUEST,
            spa: Ipv4Addr::new(10, 0, 2, 15),
            tha: [0; 6],
            tpa: Ipv4Addr::from(tpa),
        };
        s.from_guest(&req.frame([0xff; 6]), Instant::now(), &mut h);
        let got = s.pop_frame();
        assert_eq!(got.is_some(), answered, "{tpa:?}");
        if let Some(f) = got {
            let (e, rest) = Eth::parse(&f).unwrap();
            assert_eq!(e.dst, GUEST);
            let a = Arp::parse(rest).unwrap();
            assert_eq!(
                (a.op, a.sha, a.spa),
                (Arp::REPLY, GATEWAY_MAC, Ipv4Addr::from(tpa))
            );
        }
    }
}

#[test]
fn ping_the_gateway() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let ip = Ipv4 {
        src: Ipv4Addr::new(10, 0, 2, 15),
        dst: Ipv4Addr::new(10, 0, 2, 2),
        proto: PROTO_ICMP,
        ttl: 64,
        id: 9,
    };
    let echo = [8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i'];
    s.from_guest(
        &icmp_frame(
            Eth {
                dst: GATEWAY_MAC,
                src: GUEST,
                ethertype: ETHERTYPE_IPV4,
            },
            ip,
            &echo,
        ),
        Instant::now(),
        &mut h,
    );
    let f = s.pop_frame().unwrap();
    let (_, rest) = Eth::parse(&f).unwrap();
    let (rip, p) = Ipv4::parse(rest).unwrap();
    assert_eq!(
        (rip.src, rip.dst),
        (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15))
    );
    assert_eq!(p[0], 0);
    assert_eq!(&p[4..], &echo[4..]);
    assert_eq!(
        netdevd_wire::checksum::fold(netdevd_wire::checksum::sum(p, 0)),
        0xffff
    );
}

#[test]
fn ping_outside_goes_through_an_icmp_socket() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let far = Ipv4Addr::new(198, 18, 0, 9);
    let ping = |s: &mut Stack, h: &mut FakeHost, dst: Ipv4Addr, seq: u8| {
        let ip = Ipv4 {
            src: Ipv4Addr::new(10, 0, 2, 15),
            dst,
            proto: PROTO_ICMP,
            ttl: 64,
            id: 9,
        };
        let eth = Eth {
            dst: GATEWAY_MAC,
            src: GUEST,
            ethertype: ETHERTYPE_IPV4,
        };
        let echo = [8, 0, 0, 0, 0x12, 0x34, 0, seq, b'h', b'i'];
        s.from_guest(&icmp_frame(eth, ip, &echo), Instant::now(), h);
    };
    ping(&mut s, &mut h, far, 1);
    ping(&mut s, &mut h, far, 2);
    // One socket for the (guest, identifier, destination); both requests sent on it.
    assert_eq!(h.open.len(), 1);
    let (&id, &target) = h.open.iter().next().unwrap();
    assert_eq!(target, SocketAddr::from((far, 0)));
    assert_eq!(h.sent.iter().filter(|(i, _)| *i == id).count(), 2);
    // The kernel's reply carries the socket's identifier; the guest gets its own back.
    s.from_host(
        id,
        &[0, 0, 0xaa, 0xbb, 0x77, 0x77, 0, 1, b'h', b'i'],
        Instant::now(),
    );
    let f = s.pop_frame().unwrap();
    let (_, rest) = Eth::parse(&f).unwrap();
    let (rip, p) = Ipv4::parse(rest).unwrap();
    assert_eq!(
        (rip.src, rip.dst, rip.proto),
        (far, Ipv4Addr::new(10, 0, 2, 15), PROTO_ICMP)
    );
    assert_eq!(&p[..10], &[0, 0, p[2], p[3], 0x12, 0x34, 0, 1, b'h', b'i']);
    assert_eq!(
        netdevd_wire::checksum::fold(netdevd_wire::checksum::sum(&p[..10], 0)),
        0xffff
    );
    // Anything but an echo reply from the socket is dropped.
    s.from_host(id, &[3, 1, 0, 0, 0, 0, 0, 0], Instant::now());
    assert!(s.pop_frame().is_none());
    // Loopback, the guest network and restricted guests get nothing out.
    ping(&mut s, &mut h, Ipv4Addr::new(127, 0, 0, 1), 3);
    ping(&mut s, &mut h, Ipv4Addr::new(10, 0, 2, 77), 3);
    assert_eq!(h.open.len(), 1);
    let mut r = Stack::new(Config {
        restrict: true,
        ..Config::default()
    });
    let mut h2 = FakeHost::default();
    ping(&mut r, &mut h2, far, 1);
    assert!(h2.open.is_empty());
}

#[test]
fn udp_nat_maps_gateway_to_loopback_and_dns_upstream() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let now = Instant::now();
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 2), 4000, 7, b"ping"),
        now,
        &mut h,
    );
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 3), 4001, 53, b"query"),
        now,
        &mut h,
    );
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 3), 4001, 54, b"x"),
        now,
        &mut h,
    );
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 2), 4000, 7, b"again"),
        now,
        &mut h,
    );
    let targets: Vec<SocketAddr> = h.open.values().copied().collect();
    assert_eq!(
        targets,
        vec![
            "127.0.0.1:7".parse().unwrap(),
            "127.0.0.2:53".parse().unwrap()
        ]
    );
    assert_eq!(
        h.sent.len(),
        3,
        "one flow reused, the DNS address only on port 53"
    );
    // The reply comes back from the address the guest used.
    let id = *h.open.keys().next().unwrap();
    s.from_host(id, b"pong", now);
    let f = s.pop_frame().unwrap();
    let (e, rest) = Eth::parse(&f).unwrap();
    assert_eq!(e.dst, GUEST);
    let (ip, p) = Ipv4::parse(rest).unwrap();
    let (u, d) = Udp::parse(&ip, p).unwrap();
    assert_eq!(
        (ip.src, u.src_port, u.dst_port, d),
        (Ipv4Addr::new(10, 0, 2, 2), 7, 4000, &b"pong"[..])
    );
    // Idle flows close: DNS after 10 s, others after 240 s.
    s.expire(now + Duration::from_secs(11), &mut h);
    assert_eq!(h.closed.len(), 1);
    s.expire(now + Duration::from_secs(241), &mut h);
    assert_eq!(s.udp_flows(), 0);
}

#[test]
fn restrict_and_limits() {
    let mut s = Stack::new(Config {
        restrict: true,
        ..Config::default()
    });
    let mut h = FakeHost::default();
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 2), 4000, 7, b"x"),
        Instant::now(),
        &mut h,
    );
    assert!(h.open.is_empty());
    let mut s = stack();
    let now = Instant::now();
    for port in 0..(MAX_UDP_FLOWS as u16 + 10) {
        s.from_guest(
            &guest_udp(Ipv4Addr::new(10, 0, 2, 2), 1000 + port, 9, b"x"),
            now,
            &mut h,
        );
    }
    assert_eq!(s.udp_flows(), MAX_UDP_FLOWS);
    assert_eq!(s.stats.refused, 10);
}

/// The guest's SYN from 10.0.2.15:40000 to 10.0.2.2:80 (ISN 1000, MSS 1460, scale 7).
fn guest_syn() -> Tcp {
    Tcp {
        src_port: 40000,
        dst_port: 80,
        seq: 1000,
        flags: Tcp::SYN,
        window: 64240,
        mss: Some(1460),
        wscale: Some(7),
        ..Tcp::default()
    }
}

fn guest_tcp(t: Tcp, data: &[u8]) -> Vec<u8> {
    let ip = Ipv4 {
        src: Ipv4Addr::new(10, 0, 2, 15),
        dst: Ipv4Addr::new(10, 0, 2, 2),
        proto: PROTO_TCP,
        ttl: 64,
        id: 1,
    };
    tcp_frame(
        Eth {
            dst: GATEWAY_MAC,
            src: GUEST,
            ethertype: ETHERTYPE_IPV4,
        },
        ip,
        &t,
        data,
    )
}

/// Every TCP segment queued for the guest.
fn to_guest_tcp(s: &mut Stack) -> Vec<(Tcp, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(f) = s.pop_frame() {
        let (_, rest) = Eth::parse(&f).unwrap();
        let Some((ip, p)) = Ipv4::parse(rest) else {
            continue;
        };
        if ip.proto == PROTO_TCP {
            let (t, d) = Tcp::parse(&ip, p).unwrap();
            out.push((t, d.to_vec()));
        }
    }
    out
}

/// With offloads on, host data goes out as large GSO frames that finish (in software,
/// as the core does for a plain receiver) into MSS-sized segments with valid checksums;
/// a large offloaded segment from the guest, checksum left partial, reaches the host
/// socket in one write.
#[test]
fn offloaded_segments_both_ways() {
    let mut s = stack();
    s.set_offload(true);
    let mut h = FakeHost::default();
    let now = Instant::now();
    s.from_guest(&guest_tcp(guest_syn(), b""), now, &mut h);
    let id = *h.open.keys().next().unwrap();
    s.tcp_connected(id, true, now, &mut h);
    let (sa, _) = to_guest_tcp(&mut s)[0].clone();
    let ours = sa.seq.wrapping_add(1);
    let ack = Tcp {
        src_port: 40000,
        dst_port: 80,
        seq: 1001,
        ack: ours,
        flags: Tcp::ACK,
        window: 8000,
        ..Tcp::default()
    };
    s.from_guest(&guest_tcp(ack, b""), now, &mut h);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
    h.inbox = data.clone();
    s.tcp_readable(id, h.eof, now, &mut h);
    let mut got = Vec::new();
    let mut big = 0;
    let mut resumed = 0;
    loop {
        let Some((f, hdr)) = s.pop_frame_offload() else {
            // The queue toward the guest is bounded: the flow waits for it to drain,
            // then goes on (the driver calls `resume` when it has pulled everything).
            if !s.has_blocked() {
                break;
            }
            resumed += 1;
            s.resume(now, &mut h);
            continue;
        };
        let hdr = hdr.expect("offload metadata on every data frame");
        assert!(f.len() <= 14 + 65535);
        if hdr.gso_type == VirtioNetHdr::GSO_TCPV4 {
            assert_eq!(hdr.gso_size, 1460);
            big += 1;
        }
        netdevd_wire::gso::finish_frame(&f, &hdr, &mut |seg| {
            assert!(seg.len() <= 1514);
            let (_, rest) = Eth::parse(seg).unwrap();
            let (ip, p) = Ipv4::parse(rest).unwrap();
            let (t, d) = Tcp::parse(&ip, p).expect("a finished segment's checksum verifies");
            assert_eq!(t.seq, ours.wrapping_add(got.len() as u32));
            got.extend_from_slice(d);
        })
        .unwrap();
    }
    assert!(big >= 3, "{big} large frames");
    assert!(
        resumed >= 1,
        "200 000 bytes do not fit the queue toward the guest at once"
    );
    assert_eq!(
        got, data,
        "all of it, in order, within the window (8000 << 7)"
    );
    // From the guest: 20 000 bytes in one frame, checksum field not filled in.
    let seg = Tcp {
        src_port: 40000,
        dst_port: 80,
        seq: 1001,
        ack: ours,
        flags: Tcp::ACK | Tcp::PSH,
        window: 8000,
        ..Tcp::default()
    };
    let mut f = guest_tcp(seg, &vec![5u8; 20_000]);
    f[14 + 20 + 16] ^= 0x5a;
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1460,
        csum_start: 34,
        csum_offset: 16,
    };
    h.sent.clear();
    s.from_guest_offloaded(&f, &hdr, now, &mut h);
    assert_eq!(h.sent, vec![(id, vec![5u8; 20_000])]);
    // Without the offload metadata the bad checksum is a drop.
    let dropped = s.stats.dropped;
    s.from_guest(&f, now, &mut h);
    assert_eq!(s.stats.dropped, dropped + 1);
}

#[test]
fn tcp_connection_both_ways_and_close() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let now = Instant::now();
    s.from_guest(&guest_tcp(guest_syn(), b""), now, &mut h);
    let (&id, &target) = h.open.iter().next().unwrap();
    assert_eq!(target, "127.0.0.1:80".parse().unwrap());
    assert!(
        to_guest_tcp(&mut s).is_empty(),
        "no SYN-ACK before the host connect succeeds"
    );
    s.tcp_connected(id, true, now, &mut h);
    let out = to_guest_tcp(&mut s);
    let (sa, _) = out[0];
    assert_eq!(sa.flags, Tcp::SYN | Tcp::ACK);
    assert_eq!(sa.ack, 1001);
    assert_eq!((sa.mss, sa.wscale), (Some(MAX_MSS), Some(OUR_WSCALE)));
    let mut ours = sa.seq.wrapping_add(1);
    // Guest data reaches the host and is acknowledged.
    let ack = Tcp {
        src_port: 40000,
        dst_port: 80,
        seq: 1001,
        ack: ours,
        flags: Tcp::ACK | Tcp::PSH,
        window: 1000,
        ..Tcp::default()
    };
    s.from_guest(&guest_tcp(ack, b"GET /"), now, &mut h);
    assert_eq!(h.sent.last().unwrap(), &(id, b"GET /".to_vec()));
    // A small segment's ACK waits a moment for a reply to ride on, then goes alone.
    assert!(to_guest_tcp(&mut s).is_empty());
    assert_eq!(s.next_deadline(), Some(now + crate::tcp::DELAYED_ACK));
    s.tcp_timers(now + crate::tcp::DELAYED_ACK, &mut h);
    assert_eq!(to_guest_tcp(&mut s).last().unwrap().0.ack, 1006);
    // Host data reaches the guest, cut to its MSS, within its window (1000 << 7).
    h.inbox = vec![7u8; 3000];
    s.tcp_readable(id, h.eof, now, &mut h);
    let segs = to_guest_tcp(&mut s);
    assert_eq!(
        segs.iter().map(|(_, d)| d.len()).collect::<Vec<_>>(),
        vec![1460, 1460, 80]
    );
    assert_eq!(segs[0].0.seq, ours);
    // Nothing acknowledged: the retransmission timer sends it all again.
    assert!(s.next_deadline().is_some());
    s.tcp_timers(now + RTO_MIN, &mut h);
    let again = to_guest_tcp(&mut s);
    assert_eq!(
        again[0].0.seq, ours,
        "go back to the oldest unacknowledged byte"
    );
    ours = ours.wrapping_add(3000);
    // The guest acknowledges; the host closes: FIN follows the data.
    h.eof = true;
    let ack = Tcp {
        src_port: 40000,
        dst_port: 80,
        seq: 1006,
        ack: ours,
        flags: Tcp::ACK,
        window: 1000,
        ..Tcp::default()
    };
    s.from_guest(&guest_tcp(ack, b""), now, &mut h);
    s.tcp_readable(id, h.eof, now, &mut h);
    let fin = to_guest_tcp(&mut s);
    assert!(fin
        .iter()
        .any(|(t, _)| t.flags & Tcp::FIN != 0 && t.seq == ours));
    // The guest acknowledges the FIN and sends its own: the host's side is shut, the flow goes.
    let finack = Tcp {
        src_port: 40000,
        dst_port: 80,
        seq: 1006,
        ack: ours.wrapping_add(1),
        flags: Tcp::ACK | Tcp::FIN,
        window: 1000,
        ..Tcp::default()
    };
    s.from_guest(&guest_tcp(finack, b""), now, &mut h);
    assert_eq!(h.shut, vec![id]);
    assert_eq!(s.tcp_flows(), 0);
    assert!(h.closed.contains(&id) && !h.aborted.contains(&id));
}

#[test]
fn tcp_inbound_handshake_learns_the_guest_mac_first() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let now = Instant::now();
    let guest = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 22);
    let id = s.tcp_inbound(guest.into(), 5555, now).unwrap();
    // No MAC known yet: an ARP request goes out instead of the SYN.
    let f = s.pop_frame().unwrap();
    let (e, rest) = Eth::parse(&f).unwrap();
    assert_eq!(
        (e.ethertype, Arp::parse(rest).unwrap().tpa),
        (ETHERTYPE_ARP, *guest.ip())
    );
    let reply = Arp {
        op: Arp::REPLY,
        sha: GUEST,
        spa: *guest.ip(),
        tha: GATEWAY_MAC,
        tpa: Ipv4Addr::new(10, 0, 2, 2),
    };
    s.from_guest(&reply.frame(GATEWAY_MAC), now, &mut h);
    s.tcp_timers(now + RTO_MIN, &mut h);
    let syn = to_guest_tcp(&mut s);
    assert_eq!(syn.len(), 1);
    // The host client speaks first, before the guest has answered.
    h.inbox = b"SSH-2.0-client".to_vec();
    s.tcp_readable(id, false, now, &mut h);
    assert!(
        to_guest_tcp(&mut s).is_empty(),
        "no data before the handshake"
    );
    let syn = syn[0].0;
    assert_eq!(
        (syn.flags, syn.src_port, syn.dst_port),
        (Tcp::SYN, 5555, 22)
    );
    let synack = Tcp {
        src_port: 22,
        dst_port: 5555,
        seq: 900,
        ack: syn.seq.wrapping_add(1),
        flags: Tcp::SYN | Tcp::ACK,
        window: 500,
        wscale: Some(2),
        mss: Some(1400),
    };
    let ip = Ipv4 {
        src: *guest.ip(),
        dst: Ipv4Addr::new(10, 0, 2, 2),
        proto: PROTO_TCP,
        ttl: 64,
        id: 3,
    };
    s.from_guest(
        &tcp_frame(
            Eth {
                dst: GATEWAY_MAC,
                src: GUEST,
                ethertype: ETHERTYPE_IPV4,
            },
            ip,
            &synack,
            b"",
        ),
        now,
        &mut h,
    );
    let ack = to_guest_tcp(&mut s);
    assert_eq!((ack[0].0.flags, ack[0].0.ack), (Tcp::ACK, 901));
    assert_eq!(s.tcp.get(&id).map(|f| f.phase), Some(Phase::Open));
    // Then what the client sent goes at once (its readable edge is long gone).
    assert_eq!(
        ack.get(1).map(|(_, d)| d.as_slice()),
        Some(&b"SSH-2.0-client"[..])
    );
}

/// A guest that opens 100 000 connections: the first MAX_TCP_FLOWS get host sockets,
/// the rest are refused with RST and counted; memory stays bounded.
#[test]
fn a_hundred_thousand_connections_get_refusals() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let now = Instant::now();
    let mut resets = 0;
    for i in 0..100_000u32 {
        let syn = Tcp {
            src_port: 1 + (i % 50_000) as u16,
            dst_port: 80 + (i / 50_000) as u16,
            seq: i,
            flags: Tcp::SYN,
            window: 100,
            ..Tcp::default()
        };
        s.from_guest(&guest_tcp(syn, b""), now, &mut h);
        if i % 1000 == 999 {
            resets += to_guest_tcp(&mut s)
                .iter()
                .filter(|(t, _)| t.flags & Tcp::RST != 0)
                .count();
        }
    }
    assert_eq!(s.tcp_flows(), MAX_TCP_FLOWS);
    assert_eq!(h.open.len(), MAX_TCP_FLOWS);
    assert_eq!(s.stats.refused as usize, 100_000 - MAX_TCP_FLOWS);
    assert_eq!(resets, 100_000 - MAX_TCP_FLOWS);
}

#[test]
fn tcp_refusals_and_resets() {
    let mut s = stack();
    let mut h = FakeHost::default();
    let now = Instant::now();
    let syn = Tcp {
        src_port: 40001,
        dst_port: 81,
        seq: 5,
        flags: Tcp::SYN,
        window: 100,
        ..Tcp::default()
    };
    s.from_guest(&guest_tcp(syn, b""), now, &mut h);
    let id = *h.open.keys().next().unwrap();
    // The host refuses: the guest gets RST.
    s.tcp_connected(id, false, now, &mut h);
    let r = to_guest_tcp(&mut s);
    assert!(r[0].0.flags & Tcp::RST != 0 && r[0].0.ack == 6);
    assert_eq!(s.tcp_flows(), 0);
    // A segment of no connection gets RST.
    let stray = Tcp {
        src_port: 40002,
        dst_port: 82,
        seq: 9,
        ack: 77,
        flags: Tcp::ACK,
        window: 100,
        ..Tcp::default()
    };
    s.from_guest(&guest_tcp(stray, b"x"), now, &mut h);
    let r = to_guest_tcp(&mut s);
    assert_eq!((r[0].0.flags, r[0].0.seq), (Tcp::RST, 77));
    // A guest RST aborts the host connection.
    s.from_guest(
        &guest_tcp(
            Tcp {
                src_port: 40003,
                ..syn
            },
            b"",
        ),
        now,
        &mut h,
    );
    let id = *h.open.keys().next().unwrap();
    s.tcp_connected(id, true, now, &mut h);
    s.from_guest(
        &guest_tcp(
            Tcp {
                src_port: 40003,
                flags: Tcp::RST,
                seq: 6,
                ..syn
            },
            b"",
        ),
        now,
        &mut h,
    );
    assert!(h.aborted.contains(&id));
    // restrict: every connection is refused.
    let mut r = Stack::new(Config {
        restrict: true,
        ..Config::default()
    });
    r.from_guest(&guest_tcp(syn, b""), now, &mut h);
    assert!(to_guest_tcp(&mut r)[0].0.flags & Tcp::RST != 0);
}

proptest::proptest! {
    #[test]
    fn any_frame(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut s = stack();
        s.from_guest(&data, Instant::now(), &mut FakeHost::default());
    }
}

#[test]
fn every_drop_is_counted_by_reason() {
    let mut s = Stack::new(Config::default());
    let mut h = FakeHost::default();
    let now = Instant::now();
    let udp = guest_udp(Ipv4Addr::new(10, 0, 2, 2), 4000, 7, b"hello");
    let with_ethertype = |t: u16| {
        let mut f = udp.clone();
        f[12..14].copy_from_slice(&t.to_be_bytes());
        f
    };
    s.from_guest(&udp[..10], now, &mut h);
    s.from_guest(&with_ethertype(ETHERTYPE_IPV6), now, &mut h);
    s.from_guest(&with_ethertype(0x88cc), now, &mut h);
    let mut bad_ip = udp.clone();
    bad_ip[14 + 10] ^= 0xff; // the header checksum
    s.from_guest(&bad_ip, now, &mut h);
    let mut bad_udp = udp.clone();
    bad_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes()); // UDP length
    s.from_guest(&bad_udp, now, &mut h);
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 255), 4000, 7, b"x"),
        now,
        &mut h,
    );
    let got: Vec<(&str, u64)> = s
        .stats
        .drops_by_reason()
        .map(|(r, n)| (r.name(), n))
        .collect();
    assert_eq!(
        got,
        vec![
            ("bad-ethernet", 1),
            ("bad-ipv4", 1),
            ("bad-udp", 1),
            ("bad-ipv6", 1),
            ("other-ethertype", 1),
            ("unroutable", 1),
        ]
    );
    assert_eq!(s.stats.dropped, 6);
    assert!(h.open.is_empty());
    // With IPv4 off, ARP and IPv4 are dropped as such.
    let mut off = Stack::new(Config {
        ipv4: false,
        ..Config::default()
    });
    off.from_guest(&udp, now, &mut h);
    assert_eq!(off.stats.drops[DropReason::Ipv4Off as usize], 1);
    assert!(h.open.is_empty());
}

/// An ICMPv6 frame from the guest (link-local source unless `src` says otherwise).
fn guest_icmpv6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, kind: u8, body: &[u8]) -> Vec<u8> {
    let ip = Ipv6 {
        src,
        dst,
        proto: PROTO_ICMPV6,
        hop_limit,
    };
    let eth_dst = if dst.is_multicast() {
        multicast_mac(dst)
    } else {
        GATEWAY_MAC
    };
    icmpv6_frame(eth_dst, GUEST, ip, kind, 0, body)
}

fn icmpv6_to_guest(s: &mut Stack) -> Vec<(Ipv6, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(f) = s.pop_frame() {
        let (eth, rest) = Eth::parse(&f).unwrap();
        assert_eq!(eth.src, GATEWAY_MAC);
        if let Some((ip, p)) = Ipv6::parse(rest) {
            let m = Icmpv6::parse(&ip, p).expect("a valid ICMPv6 checksum");
            out.push((ip, m.kind, m.body.to_vec()));
        }
    }
    out
}

#[test]
fn ipv6_neighbor_and_router_discovery_and_echo() {
    let mut s = Stack::new(Config::default());
    let mut h = FakeHost::default();
    let now = Instant::now();
    let ll: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
    let host: Ipv6Addr = "fec0::2".parse().unwrap();
    let dns: Ipv6Addr = "fec0::3".parse().unwrap();
    let slaac: Ipv6Addr = "fec0::5054:ff:fe12:3456".parse().unwrap();
    // The guest's router solicitation is answered with the prefix and the MTU.
    s.from_guest(
        &guest_icmpv6(
            ll,
            "ff02::2".parse().unwrap(),
            255,
            Icmpv6::ROUTER_SOLICIT,
            &[0; 4],
        ),
        now,
        &mut h,
    );
    let got = icmpv6_to_guest(&mut s);
    assert_eq!(got.len(), 1, "{got:?}");
    let (ip, kind, body) = &got[0];
    assert_eq!(
        (*kind, ip.hop_limit, ip.dst),
        (Icmpv6::ROUTER_ADVERT, 255, ALL_NODES)
    );
    assert!(ip.src.is_unicast_link_local());
    let prefix_opt = body[12..]
        .chunks(8)
        .position(|c| c[0] == 3 && c[1] == 4)
        .map(|i| &body[12 + i * 8..12 + i * 8 + 32])
        .expect("a prefix information option");
    assert_eq!(prefix_opt[2], 64);
    assert_eq!(prefix_opt[3] & 0xc0, 0xc0, "on-link and autonomous");
    assert_eq!(
        &prefix_opt[16..],
        &"fec0::".parse::<Ipv6Addr>().unwrap().octets()
    );
    // The next unsolicited one is scheduled.
    assert_eq!(s.next_deadline(), Some(now + super::ndp::RA_INTERVAL));
    // Duplicate address detection goes unanswered; a real solicitation of the gateway
    // and of the DNS address is answered with the gateway MAC.
    let ns = |target: Ipv6Addr| {
        let mut b = vec![0; 4];
        b.extend_from_slice(&target.octets());
        b.extend_from_slice(&[1, 1]);
        b.extend_from_slice(&GUEST);
        b
    };
    let dad_dst = netdevd_wire::ipv6::solicited_node(slaac);
    s.from_guest(
        &guest_icmpv6(
            Ipv6Addr::UNSPECIFIED,
            dad_dst,
            255,
            Icmpv6::NEIGHBOR_SOLICIT,
            &ns(slaac)[..20],
        ),
        now,
        &mut h,
    );
    s.from_guest(
        &guest_icmpv6(
            Ipv6Addr::UNSPECIFIED,
            dad_dst,
            255,
            Icmpv6::NEIGHBOR_SOLICIT,
            &ns(host)[..20],
        ),
        now,
        &mut h,
    );
    assert!(icmpv6_to_guest(&mut s).is_empty());
    for target in [host, dns] {
        let dst = netdevd_wire::ipv6::solicited_node(target);
        s.from_guest(
            &guest_icmpv6(slaac, dst, 255, Icmpv6::NEIGHBOR_SOLICIT, &ns(target)),
            now,
            &mut h,
        );
        let got = icmpv6_to_guest(&mut s);
        assert_eq!(got.len(), 1);
        let (ip, kind, body) = &got[0];
        assert_eq!(
            (*kind, ip.src, ip.dst),
            (Icmpv6::NEIGHBOR_ADVERT, target, slaac)
        );
        assert_eq!(body[0] & 0x40, 0x40, "solicited");
        assert_eq!(&body[4..20], &target.octets());
        assert_eq!(&body[20..28], &[2, 1, 0x52, 0x55, 0x0a, 0, 2, 2]);
    }
    // A solicitation with hop limit 64 cannot come from the link: dropped.
    s.from_guest(
        &guest_icmpv6(slaac, host, 64, Icmpv6::NEIGHBOR_SOLICIT, &ns(host)),
        now,
        &mut h,
    );
    assert!(icmpv6_to_guest(&mut s).is_empty());
    assert_eq!(s.stats.drops[DropReason::BadNdp as usize], 1);
    // Echo requests to the stack's addresses are answered; to others not yet.
    for dst in [host, dns] {
        s.from_guest(
            &guest_icmpv6(
                slaac,
                dst,
                64,
                Icmpv6::ECHO_REQUEST,
                b"\x12\x34\x00\x01payload",
            ),
            now,
            &mut h,
        );
        let got = icmpv6_to_guest(&mut s);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].1, got[0].0.src, got[0].0.dst),
            (Icmpv6::ECHO_REPLY, dst, slaac)
        );
        assert_eq!(got[0].2, b"\x12\x34\x00\x01payload");
    }
    // To a host outside: through an ICMPv6 socket, the guest's identifier put back into
    // the reply.
    let far: Ipv6Addr = "2001:db8::1".parse().unwrap();
    s.from_guest(
        &guest_icmpv6(slaac, far, 64, Icmpv6::ECHO_REQUEST, b"\x12\x34\x00\x07out"),
        now,
        &mut h,
    );
    assert!(icmpv6_to_guest(&mut s).is_empty());
    let (&id, &to) = h.open.iter().next().expect("an ICMPv6 socket");
    assert_eq!(to, SocketAddr::from((far, 0)));
    assert_eq!(
        h.sent.last().unwrap(),
        &(id, b"\x80\0\0\0\x12\x34\x00\x07out".to_vec())
    );
    s.from_host(id, b"\x81\0\xab\xcd\x99\x99\x00\x07out", now);
    let got = icmpv6_to_guest(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].1, got[0].0.src, got[0].0.dst),
        (Icmpv6::ECHO_REPLY, far, slaac)
    );
    assert_eq!(got[0].2, b"\x12\x34\x00\x07out");
    // Not a reply, or to a prefix or link-local address: nothing.
    s.from_host(id, b"\x80\0\0\0\0\0\0\0", now);
    assert!(icmpv6_to_guest(&mut s).is_empty());
    s.from_guest(
        &guest_icmpv6(
            slaac,
            "fec0::99".parse().unwrap(),
            64,
            Icmpv6::ECHO_REQUEST,
            b"\0\0\0\0",
        ),
        now,
        &mut h,
    );
    assert_eq!(h.open.len(), 1);
    assert_eq!(s.stats.drops[DropReason::Unroutable as usize], 1);
    assert_eq!(s.guest_addrs6(), &[ll, slaac]);
}

#[test]
fn ipv6_off_and_the_first_advertisement() {
    let mut off = Stack::new(Config {
        ipv6: false,
        ..Config::default()
    });
    let mut h = FakeHost::default();
    let now = Instant::now();
    let rs = guest_icmpv6(
        "fe80::1".parse().unwrap(),
        "ff02::2".parse().unwrap(),
        255,
        Icmpv6::ROUTER_SOLICIT,
        &[0; 4],
    );
    off.from_guest(&rs, now, &mut h);
    assert!(off.pop_frame().is_none());
    assert_eq!(off.stats.drops[DropReason::Ipv6Off as usize], 1);
    assert_eq!(off.next_deadline(), None);
    // With IPv6 on, the guest's first frame of any kind makes an advertisement due.
    let mut s = Stack::new(Config::default());
    s.from_guest(
        &guest_udp(Ipv4Addr::new(10, 0, 2, 2), 1, 7, b"x"),
        now,
        &mut h,
    );
    assert_eq!(s.next_deadline(), Some(now));
    while s.pop_frame().is_some() {}
    s.timers(now, &mut h);
    let got = icmpv6_to_guest(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, Icmpv6::ROUTER_ADVERT);
    assert_eq!(s.next_deadline(), Some(now + super::ndp::RA_INTERVAL));
}

fn guest_udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let ip = Ipv6 {
        src,
        dst,
        proto: PROTO_UDP,
        hop_limit: 64,
    };
    let udp = Udp {
        src_port: sport,
        dst_port: dport,
    };
    udp6_frame(GATEWAY_MAC, GUEST, ip, udp, data)
}

#[test]
fn udp_over_ipv6_shares_the_flow_table() {
    let mut s6 = Stack::new(Config {
        dns_upstream: vec!["127.0.0.2:53".parse().unwrap()],
        ..Config::default()
    });
    let mut h = FakeHost::default();
    let now = Instant::now();
    let me: Ipv6Addr = "fec0::5054:ff:fe12:3456".parse().unwrap();
    let dns: Ipv6Addr = "fec0::3".parse().unwrap();
    // DNS to the IPv6 DNS address goes to the upstream resolver, an IPv4 one here.
    s6.from_guest(&guest_udp6(me, dns, 5353, 53, b"query"), now, &mut h);
    // Any other prefix address stands for the host's ::1; outside, itself.
    s6.from_guest(
        &guest_udp6(me, "fec0::2".parse().unwrap(), 4000, 7, b"echo"),
        now,
        &mut h,
    );
    s6.from_guest(
        &guest_udp6(me, "fec0::99".parse().unwrap(), 4001, 7, b"echo"),
        now,
        &mut h,
    );
    s6.from_guest(
        &guest_udp6(me, "2001:db8::1".parse().unwrap(), 4002, 9, b"out"),
        now,
        &mut h,
    );
    // Link-local and multicast destinations lead nowhere.
    s6.from_guest(
        &guest_udp6(me, "fe80::1".parse().unwrap(), 4003, 9, b"x"),
        now,
        &mut h,
    );
    s6.from_guest(
        &guest_udp6(me, "ff02::fb".parse().unwrap(), 5353, 5353, b"mdns"),
        now,
        &mut h,
    );
    let targets: Vec<SocketAddr> = h.open.values().copied().collect();
    assert_eq!(
        targets,
        vec![
            "127.0.0.2:53".parse().unwrap(),
            "[::1]:7".parse().unwrap(),
            "[::1]:7".parse().unwrap(),
            "[2001:db8::1]:9".parse().unwrap(),
        ]
    );
    assert_eq!(s6.stats.drops[DropReason::Unroutable as usize], 2);
    // A second datagram of a flow uses its socket; the reply comes back over IPv6 from
    // the address the guest sent to.
    s6.from_guest(&guest_udp6(me, dns, 5353, 53, b"again"), now, &mut h);
    let (&dns_id, _) = h.open.iter().next().unwrap();
    assert_eq!(h.sent.iter().filter(|(id, _)| *id == dns_id).count(), 2);
    while s6.pop_frame().is_some() {}
    s6.from_host(dns_id, b"answer", now);
    let f = s6.pop_frame().unwrap();
    let (eth, rest) = Eth::parse(&f).unwrap();
    assert_eq!(eth.dst, GUEST);
    let (ip, p) = Ipv6::parse(rest).unwrap();
    assert_eq!((ip.src, ip.dst), (dns, me));
    let (u, d) = udp6_parse(&ip, p, true).unwrap();
    assert_eq!((u.src_port, u.dst_port, d), (53, 5353, &b"answer"[..]));
    // Restricted guests open no IPv6 flows either.
    let mut r = Stack::new(Config {
        restrict: true,
        ..Config::default()
    });
    let mut h2 = FakeHost::default();
    r.from_guest(&guest_udp6(me, dns, 5353, 53, b"query"), now, &mut h2);
    assert!(h2.open.is_empty());
    assert_eq!(r.stats.drops[DropReason::Restricted as usize], 1);
}

fn guest_tcp6(src: Ipv6Addr, dst: Ipv6Addr, t: Tcp, data: &[u8]) -> Vec<u8> {
    let ip = Ipv6 {
        src,
        dst,
        proto: PROTO_TCP,
        hop_limit: 64,
    };
    let eth = Eth {
        dst: GATEWAY_MAC,
        src: GUEST,
        ethertype: ETHERTYPE_IPV6,
    };
    tcp_frame(eth, ip, &t, data)
}

/// Every TCP segment over IPv6 queued for the guest (offloaded ones finished first, as the
/// core does for a plain receiver), with its addresses and the frame's GSO type.
fn to_guest_tcp6(s: &mut Stack) -> Vec<(Ipv6, Tcp, Vec<u8>, u8)> {
    let mut out = Vec::new();
    while let Some((f, hdr)) = s.pop_frame_offload() {
        let gso = hdr.map(|h| h.gso_type).unwrap_or(0);
        let mut segs = Vec::new();
        match hdr {
            Some(h) => {
                netdevd_wire::gso::finish_frame(&f, &h, &mut |g| segs.push(g.to_vec())).unwrap()
            }
            None => segs.push(f),
        }
        for g in segs {
            let (eth, rest) = Eth::parse(&g).unwrap();
            if eth.ethertype != ETHERTYPE_IPV6 {
                continue;
            }
            let (ip, p) = Ipv6::parse(rest).unwrap();
            if ip.proto == PROTO_TCP {
                let (t, d) = Tcp::parse_ip(&ip.into(), p, true).expect("checksum verifies");
                out.push((ip, t, d.to_vec(), gso));
            }
        }
    }
    out
}

/// TCP over IPv6 is the same translation as over IPv4: the handshake once the host connect
/// succeeds, data both ways (as `GSO_TCPV6` frames with offloads), FIN; prefix addresses
/// stand for the host's ::1, others for themselves; resets for what belongs to no flow; a
/// restricted guest is refused; forwards into the guest come from `ipv6_host`.
#[test]
fn tcp_over_ipv6_both_ways() {
    let mut s = Stack::new(Config::default());
    s.set_offload(true);
    let mut h = FakeHost::default();
    let now = Instant::now();
    let me: Ipv6Addr = "fec0::5054:ff:fe12:3456".parse().unwrap();
    let gw: Ipv6Addr = "fec0::2".parse().unwrap();
    s.from_guest(&guest_tcp6(me, gw, guest_syn(), b""), now, &mut h);
    let (&id, &target) = h.open.iter().next().unwrap();
    assert_eq!(target, "[::1]:80".parse().unwrap());
    s.tcp_connected(id, true, now, &mut h);
    let out = to_guest_tcp6(&mut s);
    let (ip, sa, _, _) = out.last().unwrap().clone();
    assert_eq!((ip.src, ip.dst), (gw, me));
    assert_eq!((sa.flags, sa.ack), (Tcp::SYN | Tcp::ACK, 1001));
    let ours = sa.seq.wrapping_add(1);
    let seg = |seq: u32, ack: u32, flags: u8| Tcp {
        src_port: 40000,
        dst_port: 80,
        seq,
        ack,
        flags,
        window: 8000,
        ..Tcp::default()
    };
    s.from_guest(
        &guest_tcp6(me, gw, seg(1001, ours, Tcp::ACK | Tcp::PSH), b"GET /"),
        now,
        &mut h,
    );
    assert_eq!(h.sent.last().unwrap(), &(id, b"GET /".to_vec()));
    // Host data: large IPv6 offloaded frames, cut into the guest's MSS.
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 11) as u8).collect();
    h.inbox = data.clone();
    s.tcp_readable(id, false, now, &mut h);
    let segs = to_guest_tcp6(&mut s);
    assert!(segs.iter().any(|s| s.3 == VirtioNetHdr::GSO_TCPV6));
    let got: Vec<u8> = segs.iter().flat_map(|s| s.2.clone()).collect();
    assert_eq!(got, data);
    assert!(segs.iter().all(|s| s.2.len() <= 1460 && s.1.ack == 1006));
    // The guest acknowledges everything and closes; the host closes: the flow goes.
    let end = ours.wrapping_add(data.len() as u32);
    s.from_guest(
        &guest_tcp6(me, gw, seg(1006, end, Tcp::ACK | Tcp::FIN), b""),
        now,
        &mut h,
    );
    assert_eq!(h.shut, vec![id]);
    h.inbox.clear();
    h.eof = true;
    s.tcp_readable(id, true, now, &mut h);
    let fin = to_guest_tcp6(&mut s);
    assert!(fin
        .iter()
        .any(|s| s.1.flags & Tcp::FIN != 0 && s.1.seq == end));
    s.from_guest(
        &guest_tcp6(me, gw, seg(1007, end.wrapping_add(1), Tcp::ACK), b""),
        now,
        &mut h,
    );
    assert_eq!(s.tcp_flows(), 0);
    // Outside the prefix: the address itself. A stray ACK: reset. Link-local: reset.
    let far: Ipv6Addr = "2001:db8::1".parse().unwrap();
    s.from_guest(&guest_tcp6(me, far, guest_syn(), b""), now, &mut h);
    assert_eq!(
        h.open.values().last(),
        Some(&"[2001:db8::1]:80".parse().unwrap())
    );
    s.from_guest(&guest_tcp6(me, gw, seg(5, 6, Tcp::ACK), b""), now, &mut h);
    s.from_guest(
        &guest_tcp6(me, "fe80::1".parse().unwrap(), guest_syn(), b""),
        now,
        &mut h,
    );
    let resets = to_guest_tcp6(&mut s);
    assert_eq!(
        resets.iter().filter(|s| s.1.flags & Tcp::RST != 0).count(),
        2
    );
    assert_eq!(h.open.len(), 1);
    // A bad checksum is a counted drop.
    let mut bad = guest_tcp6(me, gw, guest_syn(), b"");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    s.from_guest(&bad, now, &mut h);
    assert_eq!(s.stats.drops[DropReason::BadTcp as usize], 1);
    // A forward into the guest: `[::]` is the first address learnt in the prefix, and
    // the SYN comes from ipv6_host.
    assert_eq!(
        s.forward_guest("[::]:22".parse().unwrap()),
        Some(SocketAddr::new(me.into(), 22))
    );
    let fid = s
        .tcp_inbound(SocketAddr::new(me.into(), 22), 5555, now)
        .unwrap();
    let syn = to_guest_tcp6(&mut s);
    let (ip, t, _, _) = syn.last().unwrap();
    assert_eq!((ip.src, ip.dst, t.flags), (gw, me, Tcp::SYN));
    assert_eq!((t.src_port, t.dst_port), (5555, 22));
    assert!(fid != id);
    // Restricted: refused with a reset, nothing opened.
    let mut r = Stack::new(Config {
        restrict: true,
        ..Config::default()
    });
    let mut h2 = FakeHost::default();
    // (No guest address learnt yet: a forward to `[::]` has nowhere to go.)
    assert_eq!(r.forward_guest("[::]:22".parse().unwrap()), None);
    r.from_guest(&guest_tcp6(me, gw, guest_syn(), b""), now, &mut h2);
    assert!(h2.open.is_empty());
    assert!(to_guest_tcp6(&mut r)
        .iter()
        .any(|s| s.1.flags & Tcp::RST != 0));
}
