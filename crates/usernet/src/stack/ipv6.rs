//! IPv6 from the guest: the packet checked (extension headers walked), the guest's source
//! address learnt, ICMPv6 handed to NDP ([`super::ndp`]) or answered when it is an echo
//! request to one of the stack's addresses. TCP and UDP over IPv6 are not translated yet:
//! counted and dropped.

use super::*;

impl Stack {
    pub(super) fn ipv6(&mut self, eth: Eth, p: &[u8], now: Instant) {
        let Some((ip, payload)) = Ipv6::parse(p) else {
            return self.drop_frame(DropReason::BadIpv6);
        };
        if !ip.src.is_unspecified() && !ip.src.is_multicast() {
            self.learn_guest6(ip.src);
        }
        if ip.proto != PROTO_ICMPV6 {
            return self.drop_frame(DropReason::Ipv6NotYet);
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
                    return self.drop_frame(DropReason::Ipv6NotYet);
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
}
