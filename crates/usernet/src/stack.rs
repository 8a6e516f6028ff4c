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
//!
//! ICMP: echo requests to the stack's addresses are answered by the stack; to an address
//! outside they go out through an unprivileged ICMP socket per (guest, identifier,
//! destination), counted with the UDP flows, and the replies come back with the guest's
//! identifier. Where the host does not allow such sockets the request is dropped.
//!
//! This file holds the stack's state, its constants, the [`HostIo`] boundary and the
//! dispatch of guest frames by protocol; each protocol is a file of its own beside it:
//! `egress.rs` (`Egress`: frames toward the guest, the buffer pool, header builders),
//! `arp.rs`, `icmp.rs`, `udp.rs` (the UDP/ICMP flow table, both families), `services.rs`
//! (DHCP and TFTP framed), `tcp.rs` (the table of TCP flows, both families; each flow's state
//! machine is [`crate::tcp::TcpFlow`]), `ipv6.rs` (IPv6 dispatch, ICMPv6 echo, UDP over IPv6, DHCPv6) and
//! `ndp.rs` (neighbor and router discovery).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use netdevd_wire::ip::IpHeader;
use netdevd_wire::packet::{
    icmp_frame, tcp_frame, udp_frame, Arp, Eth, Ipv4, Tcp, Udp, ETHERTYPE_ARP, ETHERTYPE_IPV4,
    ETHERTYPE_IPV6, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use netdevd_wire::ipv6::{
    icmpv6_frame, multicast_mac, neighbor_advert, udp6_frame, udp6_parse, Icmpv6, Ipv6, Ndp,
    RouterAdvert, ALL_NODES, PROTO_ICMPV6,
};

use crate::config::{Config, GuestFwdTarget};
use crate::dhcp::DhcpServer;
use crate::tcp::{Seq, TcpFlow, IDLE};
use crate::tftp::TftpServer;
use netdevd_wire::VirtioNetHdr;

mod arp;
mod egress;
mod icmp;
mod ipv6;
mod ndp;
mod services;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

pub(crate) use egress::Egress;
use udp::UdpFlow;

/// UDP flows at once.
pub const MAX_UDP_FLOWS: usize = 4096;
/// An idle UDP flow lives this long (libslirp's 240 s).
pub const UDP_IDLE: Duration = Duration::from_secs(240);
/// An idle DNS flow lives this long.
pub const DNS_IDLE: Duration = Duration::from_secs(10);
/// An idle ICMP echo flow lives this long.
pub const ICMP_IDLE: Duration = Duration::from_secs(10);
/// Frames waiting for the guest.
pub const TO_GUEST_CAP: usize = 4096;
/// Bytes of frames waiting for the guest; past this, frames are dropped.
pub const TO_GUEST_BYTES: usize = 8 << 20;
/// TCP data is turned into frames only while fewer bytes than this (two 64 KiB frames) wait
/// for the guest; a flow that stops here goes on when the queue drains ([`Stack::resume`]),
/// so memory for frames stays small however large the guest's window is.
pub const TCP_QUEUE_BYTES: usize = 64 << 10;
/// The most TCP payload in one segmentation-offloaded frame toward the guest (the IPv4
/// total length stays within 65535 with a 20-byte TCP header).
pub const GSO_MAX_PAYLOAD: usize = 65535 - 40;
/// The size of the buffers big TCP frames are built in: what the core reads a frame into
/// (`netdevd_core::frame::MAX_FRAME`), so that one buffer serves both ways.
pub const FRAME_BUF: usize = 4096 + 65536;
/// Payloads up to this are built in a buffer of their own size, bigger ones in a
/// [`FRAME_BUF`] buffer.
const SMALL_PAYLOAD: usize = 2048;
/// Spare [`FRAME_BUF`] buffers kept.
const SPARE_BUFS: usize = 4;
/// The MAC every stack address answers with (libslirp's `special_ethaddr`).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// One UDP flow's handle.
pub type FlowId = u32;

/// Host sockets, as the driver provides them. The driver watches each TCP socket for
/// reading and writing from the start, edge-triggered (peeked bytes stay in the socket, so
/// only new data may wake the loop): new data, the end of the stream or an error go to
/// [`Stack::tcp_readable`], room to write to [`Stack::tcp_writable`].
pub trait HostIo {
    /// Open a UDP socket connected to `target` for flow `id`; datagrams arriving on it go
    /// to [`Stack::from_host`] with `id`.
    fn udp_open(&mut self, id: FlowId, target: SocketAddr) -> io::Result<()>;
    fn udp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<()>;
    fn udp_close(&mut self, id: FlowId);
    /// Open an unprivileged ICMP echo socket (`SOCK_DGRAM`, `IPPROTO_ICMP` or
    /// `IPPROTO_ICMPV6` by `target`'s family) connected to `target` for flow `id`;
    /// [`HostIo::udp_send`] sends echo requests on it and its replies go to
    /// [`Stack::from_host`], as for UDP. Fails where the host does not allow such sockets
    /// (`net.ipv4.ping_group_range`, which governs both families).
    fn icmp_open(&mut self, id: FlowId, target: IpAddr) -> io::Result<()>;
    /// Start a non-blocking TCP connect to `target` for flow `id`; the outcome goes to
    /// [`Stack::tcp_connected`].
    /// `Ok(true)`: connected already (the stack goes on at once, and no event follows).
    fn tcp_connect(&mut self, id: FlowId, target: SocketAddr) -> io::Result<bool>;
    /// Write what the socket takes now (0 when it is full).
    fn tcp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<usize>;
    /// Append to `buf` up to `max` bytes of what the socket holds from `skip` bytes past the
    /// oldest unconsumed byte on, without consuming them (the kernel keeps bytes the guest
    /// has not acknowledged, so the stack keeps no copy); returns how many. `Ok(0)` is end
    /// of stream with nothing past `skip`, `WouldBlock` nothing more now.
    fn tcp_peek(
        &mut self,
        id: FlowId,
        skip: usize,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize>;
    /// Drop the oldest `n` bytes (the guest acknowledged them).
    fn tcp_consume(&mut self, id: FlowId, n: usize);
    /// Shut the sending side (the guest sent FIN).
    fn tcp_shutdown(&mut self, id: FlowId);
    /// Close the socket; `abort` resets the connection.
    fn tcp_close(&mut self, id: FlowId, abort: bool);
    /// Start `argv` with a new stream socket on its stdin/stdout, for flow `id`; the outcome
    /// goes to [`Stack::tcp_connected`] as for a connect (`guestfwd` with `cmd:`).
    fn tcp_command(&mut self, id: FlowId, argv: &[String]) -> io::Result<()>;
}

/// The MSS the stack offers and accepts. The virtual link carries whatever the guest's
/// interface does, so each direction is bounded by the MSS the guest itself announces (its
/// MTU), not by the 1500-byte MTU the DHCP server suggests.
pub const MAX_MSS: u16 = 65495;

/// Flow ids from here on are the driver's (its listening sockets).
pub const FIRST_DRIVER_ID: FlowId = 0xf000_0000;

/// TCP flows at once; a SYN beyond that is answered with RST.
pub const MAX_TCP_FLOWS: usize = 16384;

/// Why a frame was dropped. Every drop is counted under one of these
/// ([`Stats::drops`]) and logged at debug level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    BadEthernet,
    /// An offloaded frame whose virtio-net header does not fit it.
    BadOffload,
    /// A malformed ARP packet.
    BadArp,
    /// A malformed IPv4 header (length, version, checksum, fragment).
    BadIpv4,
    /// A malformed UDP datagram (length, checksum).
    BadUdp,
    /// A malformed TCP segment (length, checksum, options).
    BadTcp,
    /// ICMP other than an echo request, or one too short.
    NotEchoRequest,
    /// IPv4 turned off (`ipv4=off`).
    Ipv4Off,
    /// IPv6 turned off (`ipv6=off`).
    Ipv6Off,
    /// A malformed IPv6 header or extension-header chain, or a fragment.
    BadIpv6,
    /// A malformed ICMPv6 message (length, checksum).
    BadIcmpv6,
    /// A malformed Neighbor Discovery message (hop limit, code, options).
    BadNdp,
    /// ICMPv6 the stack has no use for (other routers' advertisements, MLD, errors).
    OtherIcmpv6,
    /// A DHCPv6 message the stateless server does not answer (Solicit, malformed, for
    /// another server).
    OtherDhcpv6,
    /// Neither ARP nor IP.
    OtherEthertype,
    /// IP carrying neither TCP, UDP nor ICMP (ICMPv6).
    OtherIpProto,
    /// `restrict=on` keeps the guest from opening this flow.
    Restricted,
    /// To an address nothing stands for (loopback, multicast, broadcast, unspecified).
    Unroutable,
    /// The host socket would not take the datagram.
    HostSend,
    /// From the host: a datagram larger than the guest's MTU (no IP fragmentation).
    TooBigForGuest,
    /// From the host: an ICMP socket handed up something other than an echo reply.
    NotEchoReply,
}

impl DropReason {
    pub const ALL: [DropReason; 21] = [
        DropReason::BadEthernet,
        DropReason::BadOffload,
        DropReason::BadArp,
        DropReason::BadIpv4,
        DropReason::BadUdp,
        DropReason::BadTcp,
        DropReason::NotEchoRequest,
        DropReason::Ipv4Off,
        DropReason::Ipv6Off,
        DropReason::BadIpv6,
        DropReason::BadIcmpv6,
        DropReason::BadNdp,
        DropReason::OtherIcmpv6,
        DropReason::OtherDhcpv6,
        DropReason::OtherEthertype,
        DropReason::OtherIpProto,
        DropReason::Restricted,
        DropReason::Unroutable,
        DropReason::HostSend,
        DropReason::TooBigForGuest,
        DropReason::NotEchoReply,
    ];

    /// The name in `x-query-netdev-stats` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::BadEthernet => "bad-ethernet",
            DropReason::BadOffload => "bad-offload",
            DropReason::BadArp => "bad-arp",
            DropReason::BadIpv4 => "bad-ipv4",
            DropReason::BadUdp => "bad-udp",
            DropReason::BadTcp => "bad-tcp",
            DropReason::NotEchoRequest => "not-echo-request",
            DropReason::Ipv4Off => "ipv4-off",
            DropReason::Ipv6Off => "ipv6-off",
            DropReason::BadIpv6 => "bad-ipv6",
            DropReason::BadIcmpv6 => "bad-icmpv6",
            DropReason::BadNdp => "bad-ndp",
            DropReason::OtherIcmpv6 => "other-icmpv6",
            DropReason::OtherDhcpv6 => "other-dhcpv6",
            DropReason::OtherEthertype => "other-ethertype",
            DropReason::OtherIpProto => "other-ip-protocol",
            DropReason::Restricted => "restricted",
            DropReason::Unroutable => "unroutable",
            DropReason::HostSend => "host-send-failed",
            DropReason::TooBigForGuest => "too-big-for-guest",
            DropReason::NotEchoReply => "not-echo-reply",
        }
    }
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub from_guest: u64,
    pub to_guest: u64,
    /// Frames dropped, all reasons together (the sum of [`Stats::drops`]).
    pub dropped: u64,
    /// Frames dropped, by [`DropReason`] (indexed by `reason as usize`).
    pub drops: [u64; DropReason::ALL.len()],
    /// Flows refused (limit reached or the host socket failed).
    pub refused: u64,
}

impl Stats {
    /// Count a drop.
    pub fn drop(&mut self, why: DropReason) {
        self.dropped += 1;
        self.drops[why as usize] += 1;
        tracing::debug!(reason = why.name(), "frame dropped");
    }

    /// The drops by reason, the reasons that occurred.
    pub fn drops_by_reason(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.drops[r as usize]))
            .filter(|&(_, n)| n > 0)
    }
}

/// The stack for one guest.
pub struct Stack {
    cfg: Config,
    dhcp: DhcpServer,
    /// IPv6 addresses the guest sent from (see `ndp.rs`).
    guest_ip6: Vec<Ipv6Addr>,
    /// When the next unsolicited router advertisement is due (none before the guest's
    /// first frame).
    next_ra: Option<Instant>,
    /// The last MAC reported to [`DhcpServer::seen`], and when.
    dhcp_seen: Option<([u8; 6], Instant)>,
    /// Everything toward the guest: the queue, buffers, the guest's MAC.
    out: Egress,
    /// TCP flows with data to send that stopped at [`TCP_QUEUE_BYTES`].
    blocked: Vec<FlowId>,
    flows: HashMap<FlowId, UdpFlow>,
    by_key: HashMap<(SocketAddr, SocketAddr), FlowId>,
    by_icmp_key: HashMap<(SocketAddr, SocketAddr), FlowId>,
    tcp: HashMap<FlowId, TcpFlow>,
    by_tcp_key: HashMap<(SocketAddr, SocketAddr), FlowId>,
    tftp: Option<TftpServer>,
    next_id: FlowId,
    last_expiry: Option<Instant>,
    /// Counters (`to_guest` is [`Egress`]'s: see [`Stack::stats`]).
    stats: Stats,
}

impl Stack {
    pub fn new(cfg: Config) -> Self {
        let tftp = cfg.tftp_root.clone().map(TftpServer::new);
        let out = Egress::new(cfg.host);
        Stack {
            cfg,
            dhcp: DhcpServer::default(),
            guest_ip6: Vec::new(),
            next_ra: None,
            dhcp_seen: None,
            out,
            blocked: Vec::new(),
            flows: HashMap::new(),
            by_key: HashMap::new(),
            by_icmp_key: HashMap::new(),
            tcp: HashMap::new(),
            by_tcp_key: HashMap::new(),
            tftp,
            next_id: 1,
            last_expiry: None,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        Stats {
            to_guest: self.out.queued,
            ..self.stats
        }
    }

    /// Whether TCP flows wait for the queue toward the guest to drain.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// The queue toward the guest drained: flows that stopped for it send on.
    pub fn resume(&mut self, now: Instant, io: &mut dyn HostIo) {
        let mut ids = std::mem::take(&mut self.blocked);
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.tcp_resume(id, now, io);
        }
    }

    pub fn udp_flows(&self) -> usize {
        self.flows.len()
    }
}

impl Stack {
    fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.cfg.host
            || a == self.cfg.dns
            || self.cfg.guestfwd.iter().any(|g| *g.server.ip() == a)
    }

    fn drop_frame(&mut self, why: DropReason) {
        self.stats.drop(why);
    }

    /// A frame the guest sent.
    pub fn from_guest(&mut self, frame: &[u8], now: Instant, io: &mut dyn HostIo) {
        self.take_guest_frame(frame, true, now, io)
    }

    /// A frame from the guest with virtio-net offload metadata: a partial checksum is taken
    /// as the sender's promise (not verified), and a TCP segmentation-offloaded frame is
    /// taken whole as one large segment (the host socket does not care how bytes were cut).
    /// Other kinds are finished in software first.
    pub fn from_guest_offloaded(
        &mut self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let gso = hdr.gso_type & !VirtioNetHdr::GSO_ECN;
        if matches!(
            gso,
            VirtioNetHdr::GSO_NONE | VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_TCPV6
        ) {
            let verify = hdr.flags & VirtioNetHdr::NEEDS_CSUM == 0;
            return self.take_guest_frame(frame, verify, now, io);
        }
        let mut plain = Vec::new();
        if netdevd_wire::gso::finish_frame(frame, hdr, &mut |f| plain.push(f.to_vec())).is_err() {
            self.stats.from_guest += 1;
            return self.drop_frame(DropReason::BadOffload);
        }
        for f in plain {
            self.take_guest_frame(&f, true, now, io);
        }
    }

    fn take_guest_frame(&mut self, frame: &[u8], verify: bool, now: Instant, io: &mut dyn HostIo) {
        self.stats.from_guest += 1;
        self.expire(now, io);
        let Some((eth, rest)) = Eth::parse(frame) else {
            return self.drop_frame(DropReason::BadEthernet);
        };
        if eth.src[0] & 1 == 0 {
            if self.out.guest_mac.is_none() && self.next_ra.is_none() {
                // The guest is there: its first router advertisement is due now.
                self.next_ra = Some(now);
            }
            self.out.guest_mac = Some(eth.src);
            // Tell the DHCP server its client is alive, at most once a second per MAC.
            if self
                .dhcp_seen
                .is_none_or(|(m, t)| m != eth.src || now >= t + Duration::from_secs(1))
            {
                self.dhcp_seen = Some((eth.src, now));
                self.dhcp.seen(eth.src, now);
            }
        }
        match eth.ethertype {
            ETHERTYPE_ARP | ETHERTYPE_IPV4 if !self.cfg.ipv4 => {
                self.drop_frame(DropReason::Ipv4Off)
            }
            ETHERTYPE_ARP => self.arp(rest),
            ETHERTYPE_IPV4 => self.ipv4(eth, rest, verify, now, io),
            ETHERTYPE_IPV6 if !self.cfg.ipv6 => self.drop_frame(DropReason::Ipv6Off),
            ETHERTYPE_IPV6 => self.ipv6(eth, rest, verify, now, io),
            _ => self.drop_frame(DropReason::OtherEthertype),
        }
    }

    fn ipv4(&mut self, eth: Eth, p: &[u8], verify: bool, now: Instant, io: &mut dyn HostIo) {
        let Some((ip, payload)) = Ipv4::parse(p) else {
            return self.drop_frame(DropReason::BadIpv4);
        };
        match ip.proto {
            PROTO_UDP => self.udp(eth, ip, payload, verify, now, io),
            PROTO_TCP => self.tcp_from_guest(IpHeader::V4(ip), payload, verify, now, io),
            PROTO_ICMP => self.icmp(eth, ip, payload, now, io),
            _ => self.drop_frame(DropReason::OtherIpProto),
        }
    }

    /// Everything timed: TCP retransmissions and idle connections, TFTP retransmissions.
    pub fn timers(&mut self, now: Instant, io: &mut dyn HostIo) {
        self.tcp_timers(now, io);
        self.ndp_timers(now);
        let resend = self
            .tftp
            .as_mut()
            .map(|t| t.timers(now))
            .unwrap_or_default();
        for (client, p) in resend {
            self.tftp_out(client, &p);
        }
    }

    /// When [`Stack::tcp_timers`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let tftp = self.tftp.as_ref().and_then(TftpServer::next_deadline);
        let ra = self.next_ra.filter(|_| self.cfg.ipv6);
        self.tcp
            .values()
            .filter_map(TcpFlow::deadline)
            .chain(tftp)
            .chain(ra)
            .min()
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
                self.flow_keys(f.icmp).remove(&(f.guest, f.remote));
                io.udp_close(id);
            }
        }
    }
}
