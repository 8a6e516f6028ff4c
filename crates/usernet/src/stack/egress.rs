//! Frames toward the guest: [`Egress`] holds the bounded queue, the buffer pool big frames are
//! built in, the guest's MAC and the IPv4 identification counter, and builds the Ethernet and
//! IP headers of everything the stack sends. The stack owns one; TCP flows are handed it
//! (`crate::tcp`), so that a flow can send without reaching into the stack.

use super::*;

/// What frames toward the guest need.
#[derive(Debug)]
pub(crate) struct Egress {
    queue: VecDeque<(Vec<u8>, Option<VirtioNetHdr>)>,
    /// Bytes of the frames in `queue`.
    bytes: usize,
    /// Frame buffers of [`FRAME_BUF`] bytes given back (see [`Stack::recycle`]).
    spare: Vec<Vec<u8>>,
    /// Frames may carry offloads (see [`Stack::set_offload`]).
    pub(crate) offload: bool,
    ip_id: u16,
    /// The guest's MAC, once it has sent something.
    pub(crate) guest_mac: Option<[u8; 6]>,
    /// The gateway's IPv4 address: the sender of ARP requests for the guest.
    gateway: Ipv4Addr,
    /// Frames queued so far (`Stats::to_guest`).
    pub(crate) queued: u64,
}

impl Egress {
    pub(crate) fn new(gateway: Ipv4Addr) -> Egress {
        Egress {
            queue: VecDeque::new(),
            bytes: 0,
            spare: Vec::new(),
            offload: false,
            ip_id: 0,
            guest_mac: None,
            gateway,
            queued: 0,
        }
    }

    /// The last IPv4 identification used.
    pub(crate) fn ip_id(&self) -> u16 {
        self.ip_id
    }

    /// Queue a frame for the guest unless the queue is full (then it is dropped, as a full
    /// link would).
    pub(crate) fn push(&mut self, f: Vec<u8>, hdr: Option<VirtioNetHdr>) {
        if self.queue.len() < TO_GUEST_CAP && self.bytes + f.len() <= TO_GUEST_BYTES {
            self.queued += 1;
            self.bytes += f.len();
            self.queue.push_back((f, hdr));
        }
    }

    /// Whether TCP data should wait: the queue holds [`TCP_QUEUE_BYTES`] or is full.
    pub(crate) fn tcp_full(&self) -> bool {
        self.queue.len() >= TO_GUEST_CAP || self.bytes >= TCP_QUEUE_BYTES
    }

    /// A buffer for a frame of `hlen` header bytes (zero, in place) and up to `n` bytes of
    /// payload to follow: a [`FRAME_BUF`] one from the pool for big payloads.
    pub(crate) fn buffer(&mut self, hlen: usize, n: usize) -> Vec<u8> {
        let mut frame = if n > SMALL_PAYLOAD {
            self.spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(FRAME_BUF))
        } else {
            Vec::with_capacity(hlen + n)
        };
        frame.resize(hlen, 0);
        frame
    }

    /// A frame built in [`Egress::buffer`] whose payload (after `hlen` header bytes) turned
    /// out short: moved to a buffer of its size, so that frames waiting for the guest cost
    /// what they carry.
    pub(crate) fn shrink(&mut self, frame: Vec<u8>, hlen: usize) -> Vec<u8> {
        if frame.len() - hlen > SMALL_PAYLOAD || frame.capacity() < FRAME_BUF {
            return frame;
        }
        let small = frame.to_vec();
        self.give_back(frame);
        small
    }

    /// Keep a [`FRAME_BUF`] buffer for the next big frame (see [`Stack::recycle`]).
    pub(crate) fn give_back(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() >= FRAME_BUF && self.spare.len() < SPARE_BUFS {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// The Ethernet header of a frame to the guest, once its MAC is known (type IPv4; the
    /// TCP frame builder sets it by the IP header's family).
    pub(crate) fn eth(&self) -> Option<Eth> {
        self.guest_mac.map(eth_to_guest)
    }

    /// The IP header of a packet from the stack to the guest (see [`ip_to_guest`]).
    pub(crate) fn ip(&mut self, src: IpAddr, dst: IpAddr, proto: u8) -> IpHeader {
        ip_to_guest(&mut self.ip_id, src, dst, proto)
    }

    /// The IPv4 header of a packet from the stack to the guest.
    pub(crate) fn ipv4(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
        ipv4_to_guest(&mut self.ip_id, src, dst, proto)
    }

    /// A TCP segment from `remote` to `guest`, headers built here. Before the guest has
    /// been heard from its MAC is unknown: an IPv4 guest is asked for it (ARP) and the
    /// segment is lost (retransmission sends it again); an IPv6 guest is known only from
    /// what it sent, which taught the MAC.
    pub(crate) fn tcp(&mut self, remote: SocketAddr, guest: SocketAddr, t: &Tcp, payload: &[u8]) {
        let Some(eth) = self.eth() else {
            if let IpAddr::V4(g) = guest.ip() {
                self.who_has(g);
            }
            return;
        };
        let ip = self.ip(remote.ip(), guest.ip(), PROTO_TCP);
        self.push(tcp_frame(eth, ip, t, payload), None);
    }

    /// Ask the guest for its MAC (an ARP request from the gateway address).
    pub(crate) fn who_has(&mut self, ip: Ipv4Addr) {
        let req = Arp {
            op: Arp::REQUEST,
            sha: GATEWAY_MAC,
            spa: self.gateway,
            tha: [0; 6],
            tpa: ip,
        };
        self.push(req.frame([0xff; 6]), None);
    }
}

impl Stack {
    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.out.queue.is_empty()
    }

    /// The next frame for the guest (without offloads, see [`Stack::set_offload`]).
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.pop_frame_offload().map(|(f, _)| f)
    }

    /// The next frame for the guest and its offload metadata, if it has any.
    pub fn pop_frame_offload(&mut self) -> Option<(Vec<u8>, Option<VirtioNetHdr>)> {
        let f = self.out.queue.pop_front()?;
        self.out.bytes -= f.0.len();
        Some(f)
    }

    /// Give back a buffer a frame from [`Stack::pop_frame_offload`] was taken into. Big
    /// TCP frames are all built in buffers of one size ([`FRAME_BUF`]), reused through here:
    /// allocations of many sizes near 64 KiB, made and freed at the frame rate, leave
    /// malloc's heap fragmented and several times larger than what is alive.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.out.give_back(buf);
    }

    /// Let TCP data toward the guest go as large segmentation-offloaded frames (virtio-net
    /// `GSO_TCPV4`/`GSO_TCPV6` with `gso_size` the guest's MSS, checksum left partial:
    /// `NEEDS_CSUM`), for a driver whose core finishes them for receivers that cannot take
    /// them.
    pub fn set_offload(&mut self, on: bool) {
        self.out.offload = on;
    }

    pub(super) fn push(&mut self, f: Vec<u8>) {
        self.out.push(f, None);
    }

    /// The Ethernet and IPv4 headers of a frame from the stack to the guest at `mac`: from
    /// the gateway MAC, TTL 64, the next IPv4 identification.
    pub(super) fn headers_to_guest(
        &mut self,
        mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
    ) -> (Eth, Ipv4) {
        (eth_to_guest(mac), self.out.ipv4(src, dst, proto))
    }
}

/// The Ethernet header of a frame from the stack to the guest at `mac` (type IPv4; the TCP
/// frame builder sets it by the IP header's family).
pub(super) fn eth_to_guest(mac: [u8; 6]) -> Eth {
    Eth {
        dst: mac,
        src: GATEWAY_MAC,
        ethertype: ETHERTYPE_IPV4,
    }
}

/// An IPv4 header from the stack to the guest (TTL 64), taking the next identification
/// from `ip_id`.
fn ipv4_to_guest(ip_id: &mut u16, src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
    *ip_id = ip_id.wrapping_add(1);
    Ipv4 {
        src,
        dst,
        proto,
        ttl: 64,
        id: *ip_id,
    }
}

/// The IP header of a packet from the stack to the guest, of `src`'s and `dst`'s family
/// (TTL and hop limit 64; IPv4 takes the next identification from `ip_id`). Flows are
/// keyed within one family, so the two addresses always share it; were they ever mixed,
/// the IPv4 one is written IPv4-mapped.
fn ip_to_guest(ip_id: &mut u16, src: IpAddr, dst: IpAddr, proto: u8) -> IpHeader {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ipv4_to_guest(ip_id, src, dst, proto).into(),
        (src, dst) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            Ipv6 {
                src: v6(src),
                dst: v6(dst),
                proto,
                hop_limit: 64,
            }
            .into()
        }
    }
}
