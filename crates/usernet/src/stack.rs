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

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use netdevd_wire::packet::{
    icmp_frame, tcp_frame, tcp_frame_in_place, udp_frame, Arp, Eth, Ipv4, Tcp, Udp, ETHERTYPE_ARP,
    ETHERTYPE_IPV4, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_FRAME_HLEN,
};

use crate::config::{Config, GuestFwdTarget};
use crate::dhcp::DhcpServer;
use crate::tcp::{
    Phase, TcpFlow, DELAYED_ACK, DELAYED_ACK_MAX, IDLE, MAX_IN_FLIGHT, OUR_WSCALE, RCV_BUF,
    RTO_MAX, RTO_MIN, SYN_RETRIES,
};
use crate::tftp::TftpServer;
use netdevd_wire::VirtioNetHdr;

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
    /// Open an unprivileged ICMP echo socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) connected to
    /// `target` for flow `id`; [`HostIo::udp_send`] sends echo requests on it and its replies
    /// go to [`Stack::from_host`], as for UDP. Fails where the host does not allow such
    /// sockets (`net.ipv4.ping_group_range`).
    fn icmp_open(&mut self, id: FlowId, target: Ipv4Addr) -> io::Result<()>;
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

#[derive(Debug, Clone, Copy)]
struct UdpFlow {
    guest: SocketAddrV4,
    /// The remote end as the guest sees it.
    remote: SocketAddrV4,
    last: Instant,
    idle: Duration,
    /// An ICMP echo flow: `guest` holds the guest's echo identifier as its port, `remote`
    /// port 0.
    icmp: bool,
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
    /// The last MAC reported to [`DhcpServer::seen`], and when.
    dhcp_seen: Option<([u8; 6], Instant)>,
    to_guest: VecDeque<(Vec<u8>, Option<VirtioNetHdr>)>,
    to_guest_bytes: usize,
    /// Frame buffers of [`FRAME_BUF`] bytes given back (see [`Stack::recycle`]).
    spare: Vec<Vec<u8>>,
    /// Frames toward the guest may carry offloads (see [`Stack::set_offload`]).
    offload: bool,
    /// TCP flows with data to send that stopped at [`TCP_QUEUE_BYTES`].
    blocked: Vec<FlowId>,
    flows: HashMap<FlowId, UdpFlow>,
    by_key: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    by_icmp_key: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    tcp: HashMap<FlowId, TcpFlow>,
    by_tcp_key: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    tftp: Option<TftpServer>,
    next_id: FlowId,
    ip_id: u16,
    last_expiry: Option<Instant>,
    pub stats: Stats,
}

impl Stack {
    pub fn new(cfg: Config) -> Self {
        let tftp = cfg.tftp_root.clone().map(TftpServer::new);
        Stack {
            cfg,
            dhcp: DhcpServer::default(),
            guest_mac: None,
            dhcp_seen: None,
            to_guest: VecDeque::new(),
            to_guest_bytes: 0,
            spare: Vec::new(),
            offload: false,
            blocked: Vec::new(),
            flows: HashMap::new(),
            by_key: HashMap::new(),
            by_icmp_key: HashMap::new(),
            tcp: HashMap::new(),
            by_tcp_key: HashMap::new(),
            tftp,
            next_id: 1,
            ip_id: 0,
            last_expiry: None,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.to_guest.is_empty()
    }

    /// The next frame for the guest (without offloads, see [`Stack::set_offload`]).
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.pop_frame_offload().map(|(f, _)| f)
    }

    /// The next frame for the guest and its offload metadata, if it has any.
    pub fn pop_frame_offload(&mut self) -> Option<(Vec<u8>, Option<VirtioNetHdr>)> {
        let f = self.to_guest.pop_front()?;
        self.to_guest_bytes -= f.0.len();
        Some(f)
    }

    /// Give back a buffer a frame from [`Stack::pop_frame_offload`] was taken into. Big
    /// TCP frames are all built in buffers of one size ([`FRAME_BUF`]), reused through here:
    /// allocations of many sizes near 64 KiB, made and freed at the frame rate, leave
    /// malloc's heap fragmented and several times larger than what is alive.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        give_back(&mut self.spare, buf);
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
            self.tcp_push(id, now, io);
            self.tcp_maybe_done(id, io);
        }
    }

    /// Let TCP data toward the guest go as large segmentation-offloaded frames (virtio-net
    /// `GSO_TCPV4` with `gso_size` the guest's MSS, checksum left partial: `NEEDS_CSUM`),
    /// for a driver whose core finishes them for receivers that cannot take them.
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    pub fn udp_flows(&self) -> usize {
        self.flows.len()
    }

    fn push(&mut self, f: Vec<u8>) {
        push_frame(
            &mut self.to_guest,
            &mut self.to_guest_bytes,
            &mut self.stats,
            f,
            None,
        );
    }
}

/// Queue a frame for the guest unless the queue is full (then it is dropped, as a full
/// link would).
/// Keep a [`FRAME_BUF`] buffer for the next big frame (see [`Stack::recycle`]).
fn give_back(spare: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() >= FRAME_BUF && spare.len() < SPARE_BUFS {
        buf.clear();
        spare.push(buf);
    }
}

fn push_frame(
    q: &mut VecDeque<(Vec<u8>, Option<VirtioNetHdr>)>,
    bytes: &mut usize,
    stats: &mut Stats,
    f: Vec<u8>,
    hdr: Option<VirtioNetHdr>,
) {
    if q.len() < TO_GUEST_CAP && *bytes + f.len() <= TO_GUEST_BYTES {
        stats.to_guest += 1;
        *bytes += f.len();
        q.push_back((f, hdr));
    }
}

impl Stack {
    fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.cfg.host
            || a == self.cfg.dns
            || self.cfg.guestfwd.iter().any(|g| *g.server.ip() == a)
    }

    fn drop_frame(&mut self) {
        self.stats.dropped += 1;
    }

    /// A frame the guest sent.
    pub fn from_guest(&mut self, frame: &[u8], now: Instant, io: &mut dyn HostIo) {
        self.take_guest_frame(frame, true, now, io)
    }

    /// A frame from the guest with virtio-net offload metadata: a partial checksum is taken
    /// as the sender's promise (not verified), and a TCPv4 segmentation-offloaded frame is
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
        if gso == VirtioNetHdr::GSO_NONE || gso == VirtioNetHdr::GSO_TCPV4 {
            let verify = hdr.flags & VirtioNetHdr::NEEDS_CSUM == 0;
            return self.take_guest_frame(frame, verify, now, io);
        }
        let mut plain = Vec::new();
        if netdevd_wire::gso::finish_frame(frame, hdr, &mut |f| plain.push(f.to_vec())).is_err() {
            self.stats.from_guest += 1;
            return self.drop_frame();
        }
        for f in plain {
            self.take_guest_frame(&f, true, now, io);
        }
    }

    fn take_guest_frame(&mut self, frame: &[u8], verify: bool, now: Instant, io: &mut dyn HostIo) {
        self.stats.from_guest += 1;
        self.expire(now, io);
        let Some((eth, rest)) = Eth::parse(frame) else {
            return self.drop_frame();
        };
        if eth.src[0] & 1 == 0 {
            self.guest_mac = Some(eth.src);
            // Tell the DHCP server its client is alive, at most once a second per MAC.
            if self
                .dhcp_seen
                .is_none_or(|(m, t)| m != eth.src || now >= t + Duration::from_secs(1))
            {
                self.dhcp_seen = Some((eth.src, now));
                self.dhcp.seen(eth.src, now);
            }
        }
        if !self.cfg.ipv4 {
            return self.drop_frame();
        }
        match eth.ethertype {
            ETHERTYPE_ARP => self.arp(rest),
            ETHERTYPE_IPV4 => self.ipv4(eth, rest, verify, now, io),
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

    fn ipv4(&mut self, eth: Eth, p: &[u8], verify: bool, now: Instant, io: &mut dyn HostIo) {
        let Some((ip, payload)) = Ipv4::parse(p) else {
            return self.drop_frame();
        };
        match ip.proto {
            PROTO_UDP => self.udp(eth, ip, payload, verify, now, io),
            PROTO_TCP => self.tcp_from_guest(ip, payload, verify, now, io),
            PROTO_ICMP => self.icmp(eth, ip, payload, now, io),
            _ => self.drop_frame(),
        }
    }

    fn icmp(&mut self, eth: Eth, ip: Ipv4, p: &[u8], now: Instant, io: &mut dyn HostIo) {
        if p.len() < 8 || p[0] != 8 || p[1] != 0 {
            return self.drop_frame();
        }
        if !self.is_ours(ip.dst) {
            return self.icmp_out(ip, p, now, io);
        }
        // Echo requests to the stack's own addresses are answered here.
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

    /// An echo request to an address outside: through an ICMP socket of its own per
    /// (guest, identifier, destination).
    fn icmp_out(&mut self, ip: Ipv4, p: &[u8], now: Instant, io: &mut dyn HostIo) {
        let echo_id = u16::from_be_bytes([p[4], p[5]]);
        let guest = SocketAddrV4::new(ip.src, echo_id);
        let remote = SocketAddrV4::new(ip.dst, 0);
        let id = match self.by_icmp_key.get(&(guest, remote)) {
            Some(&id) => id,
            None => {
                let dst = ip.dst;
                if self.cfg.restrict
                    || self.cfg.contains(dst)
                    || dst.is_broadcast()
                    || dst.is_multicast()
                    || dst.is_unspecified()
                    || dst.is_loopback()
                {
                    return self.drop_frame();
                }
                if self.flows.len() >= MAX_UDP_FLOWS {
                    self.stats.refused += 1;
                    return;
                }
                let id = self.alloc_id();
                if let Err(e) = io.icmp_open(id, dst) {
                    tracing::debug!("ping {dst}: no ICMP socket: {e}");
                    self.stats.refused += 1;
                    return;
                }
                self.add_flow(
                    id,
                    UdpFlow {
                        guest,
                        remote,
                        last: now,
                        idle: ICMP_IDLE,
                        icmp: true,
                    },
                );
                id
            }
        };
        if let Some(f) = self.flows.get_mut(&id) {
            f.last = now;
        }
        // The kernel puts the socket's own identifier in and computes the checksum.
        if io.udp_send(id, p).is_err() {
            self.stats.dropped += 1;
        }
    }

    fn udp(
        &mut self,
        eth: Eth,
        ip: Ipv4,
        p: &[u8],
        verify: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let Some((udp, data)) = Udp::parse_with(&ip, p, verify) else {
            return self.drop_frame();
        };
        if udp.dst_port == 67 {
            return self.dhcp(data, now);
        }
        if ip.dst == self.cfg.host && udp.dst_port == 69 {
            // TFTP is served even to a restricted guest.
            let client = SocketAddrV4::new(ip.src, udp.src_port);
            let reply = self.tftp.as_mut().and_then(|t| t.handle(client, data, now));
            if let Some(r) = reply {
                self.tftp_out(client, &r);
            }
            return;
        }
        let guest = SocketAddrV4::new(ip.src, udp.src_port);
        let remote = SocketAddrV4::new(ip.dst, udp.dst_port);
        let _ = eth;
        let id = match self.by_key.get(&(guest, remote)) {
            Some(&id) => id,
            // Restricted guests open no flows; answers on forwarded ones still go.
            None if self.cfg.restrict => return self.drop_frame(),
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

    /// The key map of UDP flows, or of ICMP echo flows.
    fn flow_keys(&mut self, icmp: bool) -> &mut HashMap<(SocketAddrV4, SocketAddrV4), FlowId> {
        if icmp {
            &mut self.by_icmp_key
        } else {
            &mut self.by_key
        }
    }

    /// Record flow `id` under its key.
    fn add_flow(&mut self, id: FlowId, f: UdpFlow) {
        self.flow_keys(f.icmp).insert((f.guest, f.remote), id);
        self.flows.insert(id, f);
    }

    fn alloc_id(&mut self) -> FlowId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        if self.next_id == 0 || self.next_id >= FIRST_DRIVER_ID {
            self.next_id = 1;
        }
        id
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
        let id = self.alloc_id();
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
        self.add_flow(
            id,
            UdpFlow {
                guest,
                remote,
                last: now,
                idle,
                icmp: false,
            },
        );
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

    fn tftp_out(&mut self, client: SocketAddrV4, payload: &[u8]) {
        let Some(mac) = self.guest_mac else {
            return self.who_has(*client.ip());
        };
        let id = self.next_ip_id();
        let ip = Ipv4 {
            src: self.cfg.host,
            dst: *client.ip(),
            proto: PROTO_UDP,
            ttl: 64,
            id,
        };
        let f = udp_frame(
            Eth {
                dst: mac,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
            ip,
            Udp {
                src_port: 69,
                dst_port: client.port(),
            },
            payload,
        );
        self.push(f);
    }

    /// Everything timed: TCP retransmissions and idle connections, TFTP retransmissions.
    pub fn timers(&mut self, now: Instant, io: &mut dyn HostIo) {
        self.tcp_timers(now, io);
        let resend = self
            .tftp
            .as_mut()
            .map(|t| t.timers(now))
            .unwrap_or_default();
        for (client, p) in resend {
            self.tftp_out(client, &p);
        }
    }

    /// A datagram arrived on a forwarded host UDP port from a client at port `client_port`:
    /// it goes to `guest`, from the gateway address with the client's port. Returns the
    /// flow's id and whether it is new (the driver then remembers where replies go); `None`
    /// when the flow limit is reached.
    pub fn udp_inbound(
        &mut self,
        guest: SocketAddrV4,
        client_port: u16,
        data: &[u8],
        now: Instant,
    ) -> Option<(FlowId, bool)> {
        let remote = SocketAddrV4::new(self.cfg.host, client_port);
        let (id, new) = match self.by_key.get(&(guest, remote)) {
            Some(&id) => (id, false),
            None => {
                if self.flows.len() >= MAX_UDP_FLOWS {
                    self.stats.refused += 1;
                    return None;
                }
                let id = self.alloc_id();
                self.add_flow(
                    id,
                    UdpFlow {
                        guest,
                        remote,
                        last: now,
                        idle: UDP_IDLE,
                        icmp: false,
                    },
                );
                (id, true)
            }
        };
        self.from_host(id, data, now);
        Some((id, new))
    }

    /// A datagram arrived on flow `id`'s host socket.
    pub fn from_host(&mut self, id: FlowId, data: &[u8], now: Instant) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.last = now;
        let flow = *flow;
        let Some(mac) = self.guest_mac else {
            return self.who_has(*flow.guest.ip());
        };
        if flow.icmp {
            return self.icmp_reply(flow, mac, data);
        }
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

    /// An echo reply on an ICMP flow's socket goes to the guest with the guest's identifier.
    fn icmp_reply(&mut self, flow: UdpFlow, mac: [u8; 6], data: &[u8]) {
        if data.len() < 8 || data[0] != 0 || data.len() + 28 > self.cfg.mtu as usize {
            self.stats.dropped += 1;
            return;
        }
        let mut reply = data.to_vec();
        reply[4..6].copy_from_slice(&flow.guest.port().to_be_bytes());
        let ipid = self.next_ip_id();
        let ip = Ipv4 {
            src: *flow.remote.ip(),
            dst: *flow.guest.ip(),
            proto: PROTO_ICMP,
            ttl: 64,
            id: ipid,
        };
        let eth = Eth {
            dst: mac,
            src: GATEWAY_MAC,
            ethertype: ETHERTYPE_IPV4,
        };
        let f = icmp_frame(eth, ip, &reply);
        self.push(f);
    }

    pub fn tcp_flows(&self) -> usize {
        self.tcp.len()
    }

    /// The guest has not sent anything yet, so its MAC is unknown: ask for it (ARP). The
    /// frame that needed it is lost; TCP's retransmission sends it again.
    fn who_has(&mut self, ip: Ipv4Addr) {
        let req = Arp {
            op: Arp::REQUEST,
            sha: GATEWAY_MAC,
            spa: self.cfg.host,
            tha: [0; 6],
            tpa: ip,
        };
        self.push(req.frame([0xff; 6]));
    }

    fn tcp_out(&mut self, remote: SocketAddrV4, guest: SocketAddrV4, t: Tcp, payload: &[u8]) {
        let Some(mac) = self.guest_mac else {
            return self.who_has(*guest.ip());
        };
        let id = self.next_ip_id();
        let ip = Ipv4 {
            src: *remote.ip(),
            dst: *guest.ip(),
            proto: PROTO_TCP,
            ttl: 64,
            id,
        };
        let f = tcp_frame(
            Eth {
                dst: mac,
                src: GATEWAY_MAC,
                ethertype: ETHERTYPE_IPV4,
            },
            ip,
            &t,
            payload,
        );
        self.push(f);
    }

    /// Answer a segment that belongs to no connection with RST (RFC 793 "reset generation").
    fn tcp_reset(&mut self, ip: &Ipv4, t: &Tcp, len: usize) {
        if t.flags & Tcp::RST != 0 {
            return;
        }
        let remote = SocketAddrV4::new(ip.dst, t.dst_port);
        let guest = SocketAddrV4::new(ip.src, t.src_port);
        let syn_fin = (t.flags & (Tcp::SYN | Tcp::FIN) != 0) as u32;
        let r = if t.flags & Tcp::ACK != 0 {
            Tcp {
                src_port: t.dst_port,
                dst_port: t.src_port,
                seq: t.ack,
                flags: Tcp::RST,
                ..Tcp::default()
            }
        } else {
            Tcp {
                src_port: t.dst_port,
                dst_port: t.src_port,
                ack: t.seq.wrapping_add(len as u32).wrapping_add(syn_fin),
                flags: Tcp::RST | Tcp::ACK,
                ..Tcp::default()
            }
        };
        self.tcp_out(remote, guest, r, &[]);
    }

    /// Where a guest connection to `remote` goes on the host, if anywhere.
    fn tcp_target(&self, remote: SocketAddrV4) -> Option<SocketAddr> {
        self.target(remote)
    }

    fn tcp_from_guest(
        &mut self,
        ip: Ipv4,
        p: &[u8],
        verify: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let Some((t, data)) = Tcp::parse_with(&ip, p, verify) else {
            return self.drop_frame();
        };
        let guest = SocketAddrV4::new(ip.src, t.src_port);
        let remote = SocketAddrV4::new(ip.dst, t.dst_port);
        let Some(&id) = self.by_tcp_key.get(&(guest, remote)) else {
            if t.flags & (Tcp::SYN | Tcp::ACK | Tcp::RST) == Tcp::SYN {
                return self.tcp_open(ip, t, now, io);
            }
            return self.tcp_reset(&ip, &t, data.len());
        };
        if t.flags & Tcp::RST != 0 {
            io.tcp_close(id, true);
            return self.tcp_forget(id);
        }
        let Some(f) = self.tcp.get_mut(&id) else {
            return;
        };
        f.last = now;
        if f.phase == Phase::SynSent {
            // Our SYN's answer: the connection is open once it acknowledges our SYN.
            if t.flags & (Tcp::SYN | Tcp::ACK) == Tcp::SYN | Tcp::ACK
                && t.ack == f.isn.wrapping_add(1)
            {
                f.rcv_nxt = t.seq.wrapping_add(1);
                f.guest_wscale = t.wscale;
                f.our_wscale = if t.wscale.is_some() { OUR_WSCALE } else { 0 };
                f.guest_win = (t.window as u32) << t.wscale.unwrap_or(0);
                f.guest_mss = t.mss.unwrap_or(536).min(MAX_MSS);
                f.phase = Phase::Open;
                f.rto_at = None;
                f.rto = RTO_MIN;
                self.tcp_ack(id);
                // What the host client sent before the guest answered has raised its only
                // readable edge already: send it now.
                self.tcp_push(id, now, io);
                self.tcp_maybe_done(id, io);
            }
            return;
        }
        if t.flags & Tcp::SYN != 0 {
            // A retransmitted SYN: answer again once connected.
            if f.phase == Phase::Open {
                self.tcp_synack(id);
            }
            return;
        }
        if f.phase == Phase::Connecting {
            return;
        }
        if t.flags & Tcp::ACK != 0 {
            let acked = t.ack.wrapping_sub(f.snd_una);
            let sent = f.snd_nxt.wrapping_sub(f.snd_una);
            if acked <= sent {
                let data_acked = acked.min(f.in_flight()) as usize;
                if data_acked > 0 {
                    io.tcp_consume(id, data_acked);
                }
                f.snd_una = t.ack;
                if f.fin_seq.is_some_and(|s| t.ack == s.wrapping_add(1)) {
                    f.fin_acked = true;
                }
                if acked > 0 {
                    f.rto = RTO_MIN;
                    f.rto_at = (f.snd_nxt != f.snd_una).then_some(now + f.rto);
                }
            }
            f.guest_win = (t.window as u32) << f.guest_wscale.unwrap_or(0);
        }
        let mut ack_now = false;
        let mut may_delay = false;
        if !data.is_empty() || t.flags & Tcp::FIN != 0 {
            ack_now = true;
            if t.seq == f.rcv_nxt && !f.guest_fin {
                // Nothing waiting for the host socket: write straight from the frame, and
                // keep only what it did not take.
                let mut take = 0;
                if f.to_host.is_empty() && !data.is_empty() {
                    take = io.tcp_send(id, data).unwrap_or(0);
                }
                let room = RCV_BUF - f.to_host.len();
                let more = (data.len() - take).min(room);
                if more > 0 && f.to_host.capacity() == 0 {
                    // Its whole size at once: growing by doubling would hold the old and
                    // the new buffer at the same time.
                    f.to_host.reserve_exact(RCV_BUF);
                }
                f.to_host.extend_from_slice(&data[take..take + more]);
                let take = take + more;
                f.rcv_nxt = f.rcv_nxt.wrapping_add(take as u32);
                if take == data.len() && t.flags & Tcp::FIN != 0 {
                    f.rcv_nxt = f.rcv_nxt.wrapping_add(1);
                    f.guest_fin = true;
                }
                // A small in-sequence segment the host socket took whole: its ACK can wait
                // for the reply to ride on (as a receiver's delayed ACK does), once. So can
                // a FIN's: the host's FIN usually follows at once and carries it.
                may_delay = take == data.len()
                    && data.len() <= DELAYED_ACK_MAX
                    && f.to_host.is_empty()
                    && f.ack_due.is_none();
                if may_delay {
                    f.ack_due = Some(now + DELAYED_ACK);
                }
            }
        }
        self.tcp_flush_to_host(id, io);
        if ack_now && !may_delay {
            self.tcp_ack(id);
        }
        self.tcp_push(id, now, io);
        self.tcp_maybe_done(id, io);
    }

    fn tcp_open(&mut self, ip: Ipv4, t: Tcp, now: Instant, io: &mut dyn HostIo) {
        let guest = SocketAddrV4::new(ip.src, t.src_port);
        let remote = SocketAddrV4::new(ip.dst, t.dst_port);
        // guestfwd rules apply even to a restricted guest.
        let fwd = self
            .cfg
            .guestfwd
            .iter()
            .find(|g| g.server == remote)
            .map(|g| g.target.clone());
        let target = match fwd {
            Some(t) => Some(t),
            None if self.cfg.restrict => None,
            None => self.tcp_target(remote).map(GuestFwdTarget::Addr),
        };
        let Some(target) = target else {
            return self.tcp_reset(&ip, &t, 0);
        };
        if self.tcp.len() >= MAX_TCP_FLOWS {
            self.stats.refused += 1;
            return self.tcp_reset(&ip, &t, 0);
        }
        let id = self.alloc_id();
        let started = match &target {
            GuestFwdTarget::Addr(a) => io.tcp_connect(id, *a),
            GuestFwdTarget::Command(argv) => io.tcp_command(id, argv).map(|()| false),
        };
        let Ok(connected) = started else {
            self.stats.refused += 1;
            return self.tcp_reset(&ip, &t, 0);
        };
        let nanos = now.elapsed().as_nanos() as u32 ^ (id.wrapping_mul(2_654_435_761));
        let isn = nanos ^ (self.ip_id as u32) << 16;
        let mss = MAX_MSS;
        let flow = TcpFlow {
            guest,
            remote,
            phase: Phase::Connecting,
            isn,
            rcv_nxt: t.seq.wrapping_add(1),
            to_host: Vec::new(),
            guest_fin: false,
            host_shut: false,
            snd_una: isn.wrapping_add(1),
            snd_nxt: isn.wrapping_add(1),
            host_eof: false,
            // A socket connected just now holds nothing: its first bytes raise an edge (an
            // edge-triggered registration also reports what is there when it is added).
            host_data: false,
            host_hup: false,
            fin_seq: None,
            fin_acked: false,
            guest_win: t.window as u32,
            guest_wscale: t.wscale,
            our_wscale: if t.wscale.is_some() { OUR_WSCALE } else { 0 },
            guest_mss: t.mss.unwrap_or(536).min(mss),
            rto: RTO_MIN,
            ack_due: None,
            rto_at: None,
            last: now,
            syns: 0,
        };
        self.tcp.insert(id, flow);
        self.by_tcp_key.insert((guest, remote), id);
        if connected {
            self.tcp_connected(id, true, now, io);
        }
    }

    /// A host connection arrived on a forwarded port: it goes to `guest`, appearing to come
    /// from the gateway address with the client's port (as libslirp shows a loopback
    /// client). Returns the flow's id; the driver keeps the accepted socket under it. `None`
    /// when the flow limit is reached (the driver closes the socket).
    pub fn tcp_inbound(
        &mut self,
        guest: SocketAddrV4,
        client_port: u16,
        now: Instant,
    ) -> Option<FlowId> {
        if self.tcp.len() >= MAX_TCP_FLOWS {
            self.stats.refused += 1;
            return None;
        }
        let remote = SocketAddrV4::new(self.cfg.host, client_port);
        if self.by_tcp_key.contains_key(&(guest, remote)) {
            return None;
        }
        let id = self.alloc_id();
        let isn = (now.elapsed().as_nanos() as u32) ^ id.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995;
        let flow = TcpFlow {
            guest,
            remote,
            phase: Phase::SynSent,
            isn,
            rcv_nxt: 0,
            to_host: Vec::new(),
            guest_fin: false,
            host_shut: false,
            snd_una: isn.wrapping_add(1),
            snd_nxt: isn.wrapping_add(1),
            host_eof: false,
            host_data: true,
            host_hup: false,
            fin_seq: None,
            fin_acked: false,
            guest_win: 0,
            guest_wscale: None,
            our_wscale: 0,
            guest_mss: 536,
            rto: RTO_MIN,
            ack_due: None,
            rto_at: Some(now + RTO_MIN),
            last: now,
            syns: 1,
        };
        self.tcp.insert(id, flow);
        self.by_tcp_key.insert((guest, remote), id);
        self.tcp_syn(id);
        Some(id)
    }

    /// Our SYN toward the guest (forwarded connections).
    fn tcp_syn(&mut self, id: FlowId) {
        let Some(f) = self.tcp.get(&id) else { return };
        let t = Tcp {
            ack: 0,
            mss: Some(MAX_MSS),
            wscale: Some(OUR_WSCALE),
            window: f.syn_window(),
            ..f.segment(Tcp::SYN, f.isn)
        };
        let (remote, guest) = (f.remote, f.guest);
        self.tcp_out(remote, guest, t, &[]);
    }

    fn tcp_synack(&mut self, id: FlowId) {
        let Some(f) = self.tcp.get(&id) else { return };
        // Window scaling is on only if both offer it; a SYN's own window is never scaled.
        let t = Tcp {
            mss: Some(MAX_MSS),
            wscale: f.guest_wscale.map(|_| OUR_WSCALE),
            window: f.syn_window(),
            ..f.segment(Tcp::SYN | Tcp::ACK, f.isn)
        };
        let (remote, guest) = (f.remote, f.guest);
        self.tcp_out(remote, guest, t, &[]);
    }

    fn tcp_ack(&mut self, id: FlowId) {
        let Some(f) = self.tcp.get_mut(&id) else {
            return;
        };
        f.ack_due = None;
        let t = f.segment(Tcp::ACK, f.snd_nxt);
        let (remote, guest) = (f.remote, f.guest);
        self.tcp_out(remote, guest, t, &[]);
    }

    /// The host connect of flow `id` finished.
    pub fn tcp_connected(&mut self, id: FlowId, ok: bool, now: Instant, io: &mut dyn HostIo) {
        let Some(f) = self.tcp.get_mut(&id) else {
            return;
        };
        if !ok {
            let t = Tcp {
                src_port: f.remote.port(),
                dst_port: f.guest.port(),
                ack: f.rcv_nxt,
                flags: Tcp::RST | Tcp::ACK,
                ..Tcp::default()
            };
            let (remote, guest) = (f.remote, f.guest);
            self.tcp_out(remote, guest, t, &[]);
            io.tcp_close(id, true);
            return self.tcp_forget(id);
        }
        f.phase = Phase::Open;
        f.last = now;
        self.tcp_synack(id);
    }

    /// The host socket of flow `id` has new data, or an error, or (`hup`) the end of the
    /// stream arrived, maybe together with data.
    pub fn tcp_readable(&mut self, id: FlowId, hup: bool, now: Instant, io: &mut dyn HostIo) {
        if let Some(f) = self.tcp.get_mut(&id) {
            f.last = now;
            f.host_data = true;
            f.host_hup |= hup;
        }
        self.tcp_push(id, now, io);
        self.tcp_maybe_done(id, io);
    }

    /// The host socket of flow `id` can take more.
    pub fn tcp_writable(&mut self, id: FlowId, now: Instant, io: &mut dyn HostIo) {
        let before = self.tcp.get(&id).map(|f| f.to_host.len()).unwrap_or(0);
        self.tcp_flush_to_host(id, io);
        let after = self.tcp.get(&id).map(|f| f.to_host.len()).unwrap_or(0);
        // The window opened: tell the guest.
        if after < before {
            self.tcp_ack(id);
        }
        self.tcp_push(id, now, io);
        self.tcp_maybe_done(id, io);
    }

    fn tcp_flush_to_host(&mut self, id: FlowId, io: &mut dyn HostIo) {
        let Some(f) = self.tcp.get_mut(&id) else {
            return;
        };
        if f.phase != Phase::Open {
            return;
        }
        while !f.to_host.is_empty() {
            match io.tcp_send(id, &f.to_host) {
                Ok(0) => break,
                Ok(n) => {
                    f.to_host.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        if f.to_host.is_empty() && f.guest_fin && !f.host_shut {
            f.host_shut = true;
            io.tcp_shutdown(id);
        }
    }

    /// Send what the guest's window allows, peeked from the host socket straight into each
    /// frame; a FIN once the socket reports end of stream past everything sent. With
    /// offloads on, one frame carries up to [`GSO_MAX_PAYLOAD`] bytes, cut into the guest's
    /// MSS by whoever receives it. At most [`MAX_IN_FLIGHT`] bytes are unacknowledged.
    fn tcp_push(&mut self, id: FlowId, now: Instant, io: &mut dyn HostIo) {
        let Stack {
            tcp,
            to_guest,
            to_guest_bytes,
            stats,
            guest_mac,
            ip_id,
            offload,
            blocked,
            spare,
            ..
        } = self;
        let Some(f) = tcp.get_mut(&id) else {
            return;
        };
        if f.phase != Phase::Open {
            return;
        }
        let Some(mac) = *guest_mac else {
            let guest = *f.guest.ip();
            return self.who_has(guest);
        };
        let mss = f.guest_mss.max(1) as usize;
        let max_seg = if *offload {
            GSO_MAX_PAYLOAD.max(mss)
        } else {
            mss
        };
        let eth = Eth {
            dst: mac,
            src: GATEWAY_MAC,
            ethertype: ETHERTYPE_IPV4,
        };
        let mut sent = false;
        let mut broken = false;
        while f.fin_seq.is_none() && f.host_data {
            let in_flight = f.in_flight() as usize;
            let window = (f.guest_win as usize).saturating_sub(in_flight);
            let n = window
                .min(MAX_IN_FLIGHT.saturating_sub(in_flight))
                .min(max_seg);
            if n == 0 {
                break;
            }
            if to_guest.len() >= TO_GUEST_CAP || *to_guest_bytes >= TCP_QUEUE_BYTES {
                blocked.push(id);
                break;
            }
            // Headers go in front later; the payload is read straight into the rest, which
            // is never zeroed first (a 64 KiB frame may carry 8 bytes).
            let mut frame = if n > SMALL_PAYLOAD {
                spare.pop().unwrap_or_else(|| Vec::with_capacity(FRAME_BUF))
            } else {
                Vec::with_capacity(TCP_FRAME_HLEN + n)
            };
            frame.resize(TCP_FRAME_HLEN, 0);
            let got = match io.tcp_peek(id, in_flight, &mut frame, n) {
                Ok(0) => {
                    f.host_eof = true;
                    None
                }
                // Less than asked for: the socket is drained (bytes arriving later raise
                // a new readable edge), so no second peek just to hear "nothing" — unless
                // the end of the stream came, which only a peek that returns 0 shows.
                Ok(got) if got < n && !f.host_hup => {
                    f.host_data = false;
                    Some(got)
                }
                Ok(got) => Some(got.min(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    f.host_data = false;
                    None
                }
                Err(_) => {
                    broken = true;
                    None
                }
            };
            let Some(got) = got else {
                give_back(spare, frame);
                break;
            };
            frame.truncate(TCP_FRAME_HLEN + got);
            // A short read in a big buffer: moved to one of its size, so that frames
            // waiting for the guest cost what they carry.
            if got <= SMALL_PAYLOAD && frame.capacity() >= FRAME_BUF {
                let big = std::mem::replace(&mut frame, Vec::with_capacity(TCP_FRAME_HLEN + got));
                frame.extend_from_slice(&big);
                give_back(spare, big);
            }
            *ip_id = ip_id.wrapping_add(1);
            let ip = Ipv4 {
                src: *f.remote.ip(),
                dst: *f.guest.ip(),
                proto: PROTO_TCP,
                ttl: 64,
                id: *ip_id,
            };
            let t = f.segment(Tcp::ACK | Tcp::PSH, f.snd_nxt);
            let gso = offload.then(|| VirtioNetHdr {
                flags: VirtioNetHdr::NEEDS_CSUM,
                gso_type: if got > mss {
                    VirtioNetHdr::GSO_TCPV4
                } else {
                    VirtioNetHdr::GSO_NONE
                },
                hdr_len: TCP_FRAME_HLEN as u16,
                gso_size: if got > mss { mss as u16 } else { 0 },
                csum_start: 34,
                csum_offset: 16,
            });
            tcp_frame_in_place(&mut frame, eth, ip, &t, gso.is_some());
            push_frame(to_guest, to_guest_bytes, stats, frame, gso);
            f.snd_nxt = f.snd_nxt.wrapping_add(got as u32);
            sent = true;
        }
        if broken {
            // The host connection broke: reset the guest's.
            let t = Tcp {
                src_port: f.remote.port(),
                dst_port: f.guest.port(),
                seq: f.snd_nxt,
                flags: Tcp::RST,
                ..Tcp::default()
            };
            let (remote, guest) = (f.remote, f.guest);
            self.tcp_out(remote, guest, t, &[]);
            io.tcp_close(id, true);
            return self.tcp_forget(id);
        }
        if f.host_eof && f.fin_seq.is_none() {
            f.ack_due = None;
            let t = f.segment(Tcp::ACK | Tcp::FIN, f.snd_nxt);
            f.fin_seq = Some(f.snd_nxt);
            f.snd_nxt = f.snd_nxt.wrapping_add(1);
            let (remote, guest) = (f.remote, f.guest);
            if f.rto_at.is_none() {
                f.rto_at = Some(now + f.rto);
            }
            return self.tcp_out(remote, guest, t, &[]);
        }
        if sent {
            // The data carried the acknowledgement.
            f.ack_due = None;
            if f.rto_at.is_none() {
                f.rto_at = Some(now + f.rto);
            }
        }
    }

    fn tcp_maybe_done(&mut self, id: FlowId, io: &mut dyn HostIo) {
        if self.tcp.get(&id).is_some_and(|f| f.done()) {
            // An acknowledgement still owed (the guest's FIN's) goes before the flow does.
            if self.tcp.get(&id).is_some_and(|f| f.ack_due.is_some()) {
                self.tcp_ack(id);
            }
            io.tcp_close(id, false);
            self.tcp_forget(id);
        }
    }

    fn tcp_forget(&mut self, id: FlowId) {
        if let Some(f) = self.tcp.remove(&id) {
            self.by_tcp_key.remove(&(f.guest, f.remote));
        }
    }

    /// Retransmissions and idle connections. Call when [`Stack::next_deadline`] passes.
    pub fn tcp_timers(&mut self, now: Instant, io: &mut dyn HostIo) {
        let acks: Vec<FlowId> = self
            .tcp
            .iter()
            .filter(|(_, f)| f.ack_due.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in acks {
            self.tcp_ack(id);
        }
        let due: Vec<FlowId> = self
            .tcp
            .iter()
            .filter(|(_, f)| f.rto_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(f) = self.tcp.get_mut(&id) else {
                continue;
            };
            if f.phase == Phase::SynSent {
                if f.syns >= SYN_RETRIES {
                    io.tcp_close(id, true);
                    self.tcp_forget(id);
                    continue;
                }
                f.syns += 1;
                f.rto = (f.rto * 2).min(RTO_MAX);
                f.rto_at = Some(now + f.rto);
                self.tcp_syn(id);
                continue;
            }
            // Go back to the oldest unacknowledged byte and send again.
            f.snd_nxt = f.snd_una;
            f.host_data = true;
            if !f.fin_acked {
                f.fin_seq = None;
            }
            f.rto = (f.rto * 2).min(RTO_MAX);
            f.rto_at = None;
            self.tcp_push(id, now, io);
        }
        let idle: Vec<FlowId> = self
            .tcp
            .iter()
            .filter(|(_, f)| now.duration_since(f.last) >= IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            io.tcp_close(id, true);
            self.tcp_forget(id);
        }
    }

    /// When [`Stack::tcp_timers`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let tftp = self.tftp.as_ref().and_then(TftpServer::next_deadline);
        self.tcp
            .values()
            .flat_map(|f| [f.rto_at, f.ack_due])
            .flatten()
            .chain(tftp)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::RTO_MIN;
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
        fn icmp_open(&mut self, id: FlowId, target: Ipv4Addr) -> io::Result<()> {
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
            let (ip, p) = Ipv4::parse(rest).unwrap();
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
        let id = s.tcp_inbound(guest, 5555, now).unwrap();
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
}
