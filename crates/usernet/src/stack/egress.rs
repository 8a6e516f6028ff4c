//! Frames toward the guest: the bounded queue, the buffer pool big frames are built in, and
//! the IP headers of what the stack sends (the IPv4 identification counter).

use super::*;

impl Stack {
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

    /// Let TCP data toward the guest go as large segmentation-offloaded frames (virtio-net
    /// `GSO_TCPV4` with `gso_size` the guest's MSS, checksum left partial: `NEEDS_CSUM`),
    /// for a driver whose core finishes them for receivers that cannot take them.
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    pub(super) fn push(&mut self, f: Vec<u8>) {
        push_frame(
            &mut self.to_guest,
            &mut self.to_guest_bytes,
            &mut self.stats,
            f,
            None,
        );
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
        (
            eth_to_guest(mac),
            ipv4_to_guest(&mut self.ip_id, src, dst, proto),
        )
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
pub(super) fn ipv4_to_guest(ip_id: &mut u16, src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
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
pub(super) fn ip_to_guest(ip_id: &mut u16, src: IpAddr, dst: IpAddr, proto: u8) -> IpHeader {
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

/// Keep a [`FRAME_BUF`] buffer for the next big frame (see [`Stack::recycle`]).
pub(super) fn give_back(spare: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() >= FRAME_BUF && spare.len() < SPARE_BUFS {
        buf.clear();
        spare.push(buf);
    }
}

/// Queue a frame for the guest unless the queue is full (then it is dropped, as a full
/// link would).
pub(super) fn push_frame(
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
