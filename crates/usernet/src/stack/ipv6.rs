//! IPv6 from the guest: the packet checked (extension headers walked), the guest's source
//! address learnt, ICMPv6 handed to NDP ([`super::ndp`]) or answered when it is an echo
//! request to one of the stack's addresses, UDP translated by the flow table both families
//! share ([`super::udp`]; DNS to `ipv6_dns` goes to the upstream resolver whatever its
//! family), TCP handed to the translation both families share ([`super::tcp`]), stateless
//! DHCPv6 ([`crate::dhcpv6`]) answered.

use super::*;
use crate::dhcpv6;

impl Stack {
    pub(super) fn ipv6(
        &mut self,
        eth: Eth,
        p: &[u8],
        verify: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let Some((ip, payload)) = Ipv6::parse(p) else {
            return self.drop_frame(DropReason::BadIpv6);
        };
        if !ip.src.is_unspecified() && !ip.src.is_multicast() {
            self.learn_guest6(ip.src);
        }
        if ip.proto == PROTO_UDP {
            return self.udp6(eth, ip, payload, verify, now, io);
        }
        if ip.proto == PROTO_TCP {
            if ip.src.is_unspecified() || ip.dst.is_multicast() {
                return self.drop_frame(DropReason::Unroutable);
            }
            return self.tcp_from_guest(IpHeader::V6(ip), payload, verify, now, io);
        }
        if ip.proto != PROTO_ICMPV6 {
            return self.drop_frame(DropReason::OtherIpProto);
        }
        let Some(m) = Icmpv6::parse(&ip, payload) else {
            return self.drop_frame(DropReason::BadIcmpv6);
        };
        match m.kind {
            Icmpv6::ROUTER_SOLICIT | Icmpv6::NEIGHBOR_SOLICIT | Icmpv6::NEIGHBOR_ADVERT => {
                self.ndp(eth, ip, m, now)
            }
            Icmpv6::ECHO_REQUEST if m.code == 0 && m.body.len() >= 4 => {
                if !self.is_ours6(ip.dst) {
                    return self.echo6_out(ip, &m, now, io);
                }
                let out = Ipv6 {
                    src: ip.dst,
                    dst: ip.src,
                    proto: PROTO_ICMPV6,
                    hop_limit: 64,
                };
                let f = icmpv6_frame(eth.src, GATEWAY_MAC, out, Icmpv6::ECHO_REPLY, 0, m.body);
                self.push(f);
            }
            // Router advertisements of other routers, MLD reports, errors: nothing to do.
            _ => self.drop_frame(DropReason::OtherIcmpv6),
        }
    }

    fn udp6(
        &mut self,
        eth: Eth,
        ip: Ipv6,
        p: &[u8],
        verify: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let Some((udp, data)) = udp6_parse(&ip, p, verify) else {
            return self.drop_frame(DropReason::BadUdp);
        };
        if udp.dst_port == dhcpv6::SERVER_PORT
            && (ip.dst == ALL_DHCP_AGENTS || self.is_ours6(ip.dst))
        {
            return self.dhcpv6(eth, ip, udp, data);
        }
        if ip.src.is_unspecified() || ip.dst.is_multicast() {
            return self.drop_frame(DropReason::Unroutable);
        }
        let guest = SocketAddr::V6(SocketAddrV6::new(ip.src, udp.src_port, 0, 0));
        let remote = SocketAddr::V6(SocketAddrV6::new(ip.dst, udp.dst_port, 0, 0));
        self.udp_datagram(guest, remote, data, now, io);
    }

    /// A datagram of an IPv6 flow toward the guest.
    pub(super) fn udp6_to_guest(
        &mut self,
        mac: [u8; 6],
        remote: SocketAddrV6,
        guest: SocketAddrV6,
        udp: Udp,
        data: &[u8],
    ) {
        // No fragmentation: what does not fit the MTU is dropped.
        if data.len() + 48 > self.cfg.mtu as usize {
            return self.stats.drop(DropReason::TooBigForGuest);
        }
        let ip = Ipv6 {
            src: *remote.ip(),
            dst: *guest.ip(),
            proto: PROTO_UDP,
            hop_limit: 64,
        };
        self.push(udp6_frame(mac, GATEWAY_MAC, ip, udp, data));
    }

    /// Stateless DHCPv6, answered from the router's link-local address (served to a
    /// restricted guest too, without DNS).
    fn dhcpv6(&mut self, eth: Eth, ip: Ipv6, udp: Udp, data: &[u8]) {
        let Some(reply) = dhcpv6::reply(&self.cfg, GATEWAY_MAC, data) else {
            return self.drop_frame(DropReason::OtherDhcpv6);
        };
        let out = Ipv6 {
            src: super::ndp::LINK_LOCAL,
            dst: ip.src,
            proto: PROTO_UDP,
            hop_limit: 64,
        };
        let u = Udp {
            src_port: dhcpv6::SERVER_PORT,
            dst_port: udp.src_port,
        };
        self.push(udp6_frame(eth.src, GATEWAY_MAC, out, u, &reply));
    }

    /// An echo request to a host outside, through an ICMPv6 socket (libslirp 4.7 drops
    /// these: "external icmpv6 not supported yet"). Addresses of the prefix other than the
    /// stack's, link-local, multicast and loopback ones are not pinged.
    fn echo6_out(&mut self, ip: Ipv6, m: &Icmpv6, now: Instant, io: &mut dyn HostIo) {
        let echo_id = u16::from_be_bytes([m.body[0], m.body[1]]);
        let guest = SocketAddr::V6(SocketAddrV6::new(ip.src, echo_id, 0, 0));
        let remote = SocketAddr::V6(SocketAddrV6::new(ip.dst, 0, 0, 0));
        if !self.by_icmp_key.contains_key(&(guest, remote)) {
            if self.cfg.restrict {
                return self.drop_frame(DropReason::Restricted);
            }
            let dst = ip.dst;
            if self.cfg.in_prefix6(dst)
                || dst.is_multicast()
                || dst.is_unspecified()
                || dst.is_loopback()
                || dst.is_unicast_link_local()
                || !self.cfg.in_prefix6(ip.src)
            {
                return self.drop_frame(DropReason::Unroutable);
            }
        }
        let mut msg = vec![Icmpv6::ECHO_REQUEST, 0, 0, 0];
        msg.extend_from_slice(m.body);
        self.echo_out(guest, remote, &msg, now, io);
    }
}

/// All DHCP relay agents and servers, ff02::1:2.
const ALL_DHCP_AGENTS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
