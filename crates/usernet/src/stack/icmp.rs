//! ICMP echo: answered by the stack for its own addresses; to other hosts through an
//! unprivileged ICMP socket per (guest, identifier, destination), a flow of the UDP table
//! ([`super::udp`]), with the guest's identifier put back into the replies. ICMPv6 echo to
//! other hosts (from `ipv6.rs`) goes the same way, through ICMPv6 sockets.

use super::*;

impl Stack {
    pub(super) fn icmp(&mut self, eth: Eth, ip: Ipv4, p: &[u8], now: Instant, io: &mut dyn HostIo) {
        if p.len() < 8 || p[0] != 8 || p[1] != 0 {
            return self.drop_frame(DropReason::NotEchoRequest);
        }
        if !self.is_ours(ip.dst) {
            return self.icmp_out(ip, p, now, io);
        }
        // Echo requests to the stack's own addresses are answered here.
        let mut reply = p.to_vec();
        reply[0] = 0;
        let (eth, out_ip) = self.headers_to_guest(eth.src, ip.dst, ip.src, PROTO_ICMP);
        self.push(icmp_frame(eth, out_ip, &reply));
    }

    /// An echo request to an address outside: through an ICMP socket of its own per
    /// (guest, identifier, destination).
    pub(super) fn icmp_out(&mut self, ip: Ipv4, p: &[u8], now: Instant, io: &mut dyn HostIo) {
        let echo_id = u16::from_be_bytes([p[4], p[5]]);
        let guest = SocketAddr::V4(SocketAddrV4::new(ip.src, echo_id));
        let remote = SocketAddr::V4(SocketAddrV4::new(ip.dst, 0));
        if !self.by_icmp_key.contains_key(&(guest, remote)) {
            let dst = ip.dst;
            if self.cfg.restrict {
                return self.drop_frame(DropReason::Restricted);
            }
            if self.cfg.contains(dst)
                || dst.is_broadcast()
                || dst.is_multicast()
                || dst.is_unspecified()
                || dst.is_loopback()
            {
                return self.drop_frame(DropReason::Unroutable);
            }
        }
        self.echo_out(guest, remote, p, now, io);
    }

    /// An echo request (the whole ICMP or ICMPv6 message, `msg`) on the flow of (guest,
    /// identifier) and destination, opened if need be; the caller has checked that the
    /// destination may be pinged.
    pub(super) fn echo_out(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let id = match self.by_icmp_key.get(&(guest, remote)) {
            Some(&id) => id,
            None => {
                if self.flows.len() >= MAX_UDP_FLOWS {
                    self.stats.refused += 1;
                    return;
                }
                let id = self.alloc_id();
                let dst = remote.ip();
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
        if io.udp_send(id, msg).is_err() {
            self.stats.drop(DropReason::HostSend);
        }
    }

    /// An echo reply on an ICMP flow's socket goes to the guest with the guest's identifier.
    pub(super) fn icmp_reply(&mut self, flow: UdpFlow, mac: [u8; 6], data: &[u8]) {
        let (reply_type, ip_hlen) = if flow.guest.is_ipv4() {
            (0, 20)
        } else {
            (129, 40)
        };
        if data.len() < 8 || data[0] != reply_type {
            return self.stats.drop(DropReason::NotEchoReply);
        }
        if data.len() + ip_hlen + 8 > self.cfg.mtu as usize {
            return self.stats.drop(DropReason::TooBigForGuest);
        }
        let mut reply = data.to_vec();
        reply[4..6].copy_from_slice(&flow.guest.port().to_be_bytes());
        match (flow.remote, flow.guest) {
            (SocketAddr::V4(r), SocketAddr::V4(g)) => {
                let (eth, ip) = self.headers_to_guest(mac, *r.ip(), *g.ip(), PROTO_ICMP);
                self.push(icmp_frame(eth, ip, &reply));
            }
            (SocketAddr::V6(r), SocketAddr::V6(g)) => {
                let ip = Ipv6 {
                    src: *r.ip(),
                    dst: *g.ip(),
                    proto: PROTO_ICMPV6,
                    hop_limit: 64,
                };
                let f = icmpv6_frame(mac, GATEWAY_MAC, ip, reply_type, 0, &reply[4..]);
                self.push(f);
            }
            _ => {}
        }
    }
}
