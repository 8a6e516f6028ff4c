//! The stack, sans-IO: frames from the guest go in with [`Stack::from_guest`]; datagrams
//! from host sockets with [`Stack::from_host`]; frames for the guest come out of
//! [`Stack::pop_frame`]. Host sockets are opened and used through [`HostIo`].
//!
//! Addressing as libslirp: every address of the stack (gateway, DNS) answers ARP with the
//! gateway MAC 52:55:0a:00:02:02; the guest's MAC is learned from what it sends.
//!
//! UDP is translated, not terminated: each (guest address, remote address) pair is one flow
//! with one connected host socket. The gateway address maps to the host's 127.0.0.1, the DNS
//! address (port 53) to the first upstream resolver, anything outside the guest network to
//! itself. Flows expire after [`UDP_IDLE`] (DNS after [`DNS_IDLE`]); at most
//! [`MAX_UDP_FLOWS`] exist, past which new flows are refused (counted in `refused`).
//! Frames queued for the guest are bounded by [`TO_GUEST_CAP`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use netdevd_wire::packet::{
    icmp_frame, udp_frame, Arp, Eth, Ipv4, Udp, ETHERTYPE_ARP, ETHERTYPE_IPV4, PROTO_ICMP,
    PROTO_UDP,
};

use crate::config::Config;
use crate::dhcp::DhcpServer;

/// UDP flows at once.
pub const MAX_UDP_FLOWS: usize = 4096;
/// An idle UDP flow lives this long (libslirp's 240 s).
pub const UDP_IDLE: Duration = Duration::from_secs(240);
/// An idle DNS flow lives this long.
pub const DNS_IDLE: Duration = Duration::from_secs(10);
/// Frames waiting for the guest.
pub const TO_GUEST_CAP: usize = 4096;
/// The MAC every stack address answers with (libslirp's `special_ethaddr`).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// One UDP flow's handle.
pub type FlowId = u32;

/// Host sockets, as the driver provides them.
pub trait HostIo {
    /// Open a UDP socket connected to `target` for flow `id`; datagrams arriving on it go
    /// to [`Stack::from_host`] with `id`.
    fn udp_open(&mut self, id: FlowId, target: SocketAddr) -> io::Result<()>;
    fn udp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<()>;
    fn udp_close(&mut self, id: FlowId);
}

#[derive(Debug, Clone, Copy)]
struct UdpFlow {
    guest: SocketAddrV4,
    /// The remote end as the guest sees it.
    remote: SocketAddrV4,
    last: Instant,
    idle: Duration,
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub from_guest: u64,
    pub to_guest: u64,
    /// Frames from the guest dropped: malformed, not for us, restricted, unsupported.
    pub dropped: u64,
    /// Flows refused (limit reached or the host socket failed).
    pub refused: u64,
}

/// The stack for one guest.
pub struct Stack {
    cfg: Config,
    dhcp: DhcpServer,
    guest_mac: Option<[u8; 6]>,
    to_guest: VecDeque<Vec<u8>>,
    flows: HashMap<FlowId, UdpFlow>,
    by_key: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    next_id: FlowId,
    ip_id: u16,
    last_expiry: Option<Instant>,
    pub stats: Stats,
}

impl Stack {
    pub fn new(cfg: Config) -> Self {
        Stack {
            cfg,
            dhcp: DhcpServer::default(),
            guest_mac: None,
            to_guest: VecDeque::new(),
            flows: HashMap::new(),
            by_key: HashMap::new(),
            next_id: 1,
            ip_id: 0,
            last_expiry: None,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The next frame for the guest.
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.to_guest.pop_front()
    }

    pub fn udp_flows(&self) -> usize {
        self.flows.len()
    }

    fn push(&mut self, f: Vec<u8>) {
        if self.to_guest.len() < TO_GUEST_CAP {
            self.stats.to_guest += 1;
            self.to_guest.push_back(f);
        }
    }

    fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.cfg.host || a == self.cfg.dns
    }

    fn drop_frame(&mut self) {
        self.stats.dropped += 1;
    }

    /// A frame the guest sent.
    pub fn from_guest(&mut self, frame: &[u8], now: Instant, io: &mut dyn HostIo) {
        self.stats.from_guest += 1;
        self.expire(now, io);
        let Some((eth, rest)) = Eth::parse(frame) else {
            return self.drop_frame();
        };
        if eth.src[0] & 1 == 0 {
            self.guest_mac = Some(eth.src);
        }
        if !self.cfg.ipv4 {
            return self.drop_frame();
        }
        match eth.ethertype {
            ETHERTYPE_ARP => self.arp(rest),
            ETHERTYPE_IPV4 => self.ipv4(eth, rest, now, io),
            _ => self.drop_frame(),
        }
    }

    fn arp(&mut self, p: &[u8]) {
        let Some(a) = Arp::parse(p) else {
            return self.drop_frame();
        };
        if a.op != Arp::REQUEST || !self.is_ours(a.tpa) {
            return;
        }
        let reply = Arp {
            op: Arp::REPLY,
            sha: GATEWAY_MAC,
            spa: a.tpa,
            tha: a.sha,
            tpa: a.spa,
        };
        self.push(reply.frame(a.sha));
    }

    fn ipv4(&mut self, eth: Eth, p: &[u8], now: Instant, io: &mut dyn HostIo) {
        let Some((ip, payload)) = Ipv4::parse(p) else {
            return self.drop_frame();
        };
        match ip.proto {
            PROTO_UDP => self.udp(eth, ip, payload, now, io),
            PROTO_ICMP => self.icmp(eth, ip, payload),
            _ => self.drop_frame(),
        }
    }

    fn icmp(&mut self, eth: Eth, ip: Ipv4, p: &[u8]) {
        // Echo requests to the stack's own addresses are answered here.
        if p.len() < 8 || p[0] != 8 || !self.is_ours(ip.dst) {
            return self.drop_frame();
        }
        let mut reply = p.to_vec();
        reply[0] = 0;
        let id = self.next_ip_id();
        let out_ip = Ipv4 {
            src: ip.dst,
            dst: ip.src,
            proto: PROTO_ICMP,
            ttl: 64,
            id,
        };
        let f = icmp_frame(
            Eth {
                dst: eth.src,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
            out_ip,
            &reply,
        );
        self.push(f);
    }

    fn udp(&mut self, eth: Eth, ip: Ipv4, p: &[u8], now: Instant, io: &mut dyn HostIo) {
        let Some((udp, data)) = Udp::parse(&ip, p) else {
            return self.drop_frame();
        };
        if udp.dst_port == 67 {
            return self.dhcp(data, now);
        }
        if self.cfg.restrict {
            return self.drop_frame();
        }
        let guest = SocketAddrV4::new(ip.src, udp.src_port);
        let remote = SocketAddrV4::new(ip.dst, udp.dst_port);
        let _ = eth;
        let id = match self.by_key.get(&(guest, remote)) {
            Some(&id) => id,
            None => match self.open_flow(guest, remote, now, io) {
                Some(id) => id,
                None => return,
            },
        };
        if let Some(f) = self.flows.get_mut(&id) {
            f.last = now;
        }
        if io.udp_send(id, data).is_err() {
            self.stats.dropped += 1;
        }
    }

    /// Where a guest datagram to `remote` goes on the host, if anywhere.
    fn target(&self, remote: SocketAddrV4) -> Option<SocketAddr> {
        let ip = *remote.ip();
        if ip == self.cfg.host {
            return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, remote.port())));
        }
        if ip == self.cfg.dns {
            return (remote.port() == 53)
                .then(|| self.cfg.dns_upstream.first().copied())
                .flatten();
        }
        if self.cfg.contains(ip) || ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::V4(remote))
    }

    fn open_flow(
        &mut self,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
        io: &mut dyn HostIo,
    ) -> Option<FlowId> {
        let Some(target) = self.target(remote) else {
            self.drop_frame();
            return None;
        };
        if self.flows.len() >= MAX_UDP_FLOWS {
            self.stats.refused += 1;
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        if let Err(e) = io.udp_open(id, target) {
            tracing::debug!("udp flow to {target} refused: {e}");
            self.stats.refused += 1;
            return None;
        }
        let idle = if *remote.ip() == self.cfg.dns {
            DNS_IDLE
        } else {
            UDP_IDLE
        };
        self.flows.insert(
            id,
            UdpFlow {
                guest,
                remote,
                last: now,
                idle,
            },
        );
        self.by_key.insert((guest, remote), id);
        Some(id)
    }

    fn dhcp(&mut self, data: &[u8], now: Instant) {
        let Some(r) = self.dhcp.handle(&self.cfg, data, now) else {
            return;
        };
        let id = self.next_ip_id();
        let ip = Ipv4 {
            src: self.cfg.host,
            dst: r.dst,
            proto: PROTO_UDP,
            ttl: 64,
            id,
        };
        let f = udp_frame(
            Eth {
                dst: r.mac,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
            ip,
            Udp {
                src_port: 67,
                dst_port: 68,
            },
            &r.payload,
        );
        self.push(f);
    }

    /// A datagram arrived on flow `id`'s host socket.
    pub fn from_host(&mut self, id: FlowId, data: &[u8], now: Instant) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.last = now;
        let flow = *flow;
        let Some(mac) = self.guest_mac else { return };
        let ipid = self.next_ip_id();
        let ip = Ipv4 {
            src: *flow.remote.ip(),
            dst: *flow.guest.ip(),
            proto: PROTO_UDP,
            ttl: 64,
            id: ipid,
        };
        let udp = Udp {
            src_port: flow.remote.port(),
            dst_port: flow.guest.port(),
        };
        // Datagrams larger than one frame would need IP fragmentation: not done, dropped.
        if data.len() + 28 > self.cfg.mtu as usize {
            self.stats.dropped += 1;
            return;
        }
        let f = udp_frame(
            Eth {
                dst: mac,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
            ip,
            udp,
            data,
        );
        self.push(f);
    }

    /// Close flows idle for too long (checked at most once a second).
    pub fn expire(&mut self, now: Instant, io: &mut dyn HostIo) {
        if self
            .last_expiry
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_expiry = Some(now);
        let dead: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last) >= f.idle)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Some(f) = self.flows.remove(&id) {
                self.by_key.remove(&(f.guest, f.remote));
                io.udp_close(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fake host: remembers what was opened and sent.
    #[derive(Default)]
    struct FakeHost {
        open: BTreeMap<FlowId, SocketAddr>,
        sent: Vec<(FlowId, Vec<u8>)>,
        closed: Vec<FlowId>,
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
        fn udp_close(&mut self, id: FlowId) {
            self.open.remove(&id);
            self.closed.push(id);
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

    fn stack() -> Stack {
        Stack::new(Config {
            dns_upstream: vec!["127.0.0.2:53".parse().unwrap()],
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

    proptest::proptest! {
        #[test]
        fn any_frame(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut s = stack();
            s.from_guest(&data, Instant::now(), &mut FakeHost::default());
        }
    }
}
