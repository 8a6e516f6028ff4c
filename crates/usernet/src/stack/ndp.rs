//! Neighbor Discovery (RFC 4861) as the guest's router: neighbor solicitations for the
//! stack's IPv6 addresses (the gateway `ipv6_host`, its link-local `fe80::2`, `ipv6_dns`)
//! are answered with the gateway MAC; duplicate-address probes (from `::`) are left
//! unanswered, so the guest keeps whatever address it picked. Router solicitations are
//! answered at once, and an unsolicited advertisement goes out when the guest is first
//! heard from and every [`RA_INTERVAL`] after (libslirp's first comes after minutes).
//!
//! The advertisement carries the prefix (on-link, autonomous: SLAAC), the MTU, and — unless
//! `restrict` — RDNSS with `ipv6_dns` (whatever family the upstream resolvers are: queries
//! to it are relayed to them) and DNSSL from `dnssearch` (RFC 8106). The O flag says
//! stateless DHCPv6 ([`crate::dhcpv6`]) has the same DNS information. The stack is the
//! default router ([`ROUTER_LIFETIME`], libslirp's 1800 s): TCP, UDP and echo requests to
//! any address outside the prefix are translated onto host sockets.

use super::*;

/// How long the guest may use the stack as its default router (libslirp's 1800 s, three
/// times its longest advertisement interval); renewed by every advertisement.
pub const ROUTER_LIFETIME: u16 = 1800;
/// Unsolicited router advertisements, this often.
pub const RA_INTERVAL: Duration = Duration::from_secs(60);
/// How long the advertised DNS server and search list stay valid (RFC 8106 §5.1 asks for
/// at least three advertisement intervals).
pub const DNS_LIFETIME: u32 = 1800;
/// The router's link-local address (libslirp's too).
pub const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
/// Guest IPv6 addresses remembered (the newest replace the oldest).
pub const MAX_GUEST_ADDRS6: usize = 8;

impl Stack {
    /// Whether `a` is one of the stack's own IPv6 addresses.
    pub(super) fn is_ours6(&self, a: Ipv6Addr) -> bool {
        a == self.cfg.ipv6_host || a == self.cfg.ipv6_dns || a == LINK_LOCAL
    }

    pub(super) fn ndp(&mut self, eth: Eth, ip: Ipv6, m: Icmpv6, now: Instant) {
        let Some(msg) = Ndp::parse(&ip, &m) else {
            return self.drop_frame(DropReason::BadNdp);
        };
        match msg {
            Ndp::RouterSolicit { .. } => self.router_advert(now),
            Ndp::NeighborSolicit { target, source_ll } => {
                // Duplicate address detection: the prober has no address yet. Not ours
                // to answer either way.
                if ip.src.is_unspecified() || !self.is_ours6(target) {
                    return;
                }
                let body = neighbor_advert(target, GATEWAY_MAC, true);
                let mac = source_ll.unwrap_or(eth.src);
                let out = Ipv6 {
                    src: target,
                    dst: ip.src,
                    proto: PROTO_ICMPV6,
                    hop_limit: 255,
                };
                let f = icmpv6_frame(mac, GATEWAY_MAC, out, Icmpv6::NEIGHBOR_ADVERT, 0, &body);
                self.push(f);
            }
            // The guest announcing itself: its address is learnt like any other source.
            Ndp::NeighborAdvert { .. } => {}
        }
    }

    /// Remember an address the guest sends from (in the prefix or link-local).
    pub(super) fn learn_guest6(&mut self, a: Ipv6Addr) {
        let usable = self.cfg.in_prefix6(a) || a.is_unicast_link_local();
        if !usable || self.is_ours6(a) || self.guest_ip6.contains(&a) {
            return;
        }
        if self.guest_ip6.len() >= MAX_GUEST_ADDRS6 {
            self.guest_ip6.remove(0);
        }
        self.guest_ip6.push(a);
    }

    /// The guest's IPv6 addresses learnt so far, oldest first.
    pub fn guest_addrs6(&self) -> &[Ipv6Addr] {
        &self.guest_ip6
    }

    /// Where a host-side forward (`hostfwd`) into `guest` goes now: `guest` itself, or for
    /// `[::]` the guest's first IPv6 address learnt in the prefix (`None` until there is
    /// one: the connection is refused).
    pub fn forward_guest(&self, guest: SocketAddr) -> Option<SocketAddr> {
        match guest {
            SocketAddr::V6(g) if g.ip().is_unspecified() => self
                .guest_ip6
                .iter()
                .find(|a| self.cfg.in_prefix6(**a))
                .map(|a| SocketAddr::new(IpAddr::V6(*a), g.port())),
            g => Some(g),
        }
    }

    /// Send a router advertisement to all nodes, and schedule the next unsolicited one.
    pub(super) fn router_advert(&mut self, now: Instant) {
        self.next_ra = Some(now + RA_INTERVAL);
        let ra = RouterAdvert {
            hop_limit: 64,
            other_config: true,
            router_lifetime: ROUTER_LIFETIME,
            source_ll: GATEWAY_MAC,
            mtu: u32::from(self.cfg.mtu),
            prefix: self.cfg.ipv6_prefix,
            prefix_len: self.cfg.ipv6_prefixlen,
            valid_lifetime: 86400,
            preferred_lifetime: 14400,
            rdnss: if self.cfg.restrict {
                Vec::new()
            } else {
                vec![self.cfg.ipv6_dns]
            },
            dns_lifetime: DNS_LIFETIME,
            dnssl: if self.cfg.restrict {
                Vec::new()
            } else {
                self.cfg.dnssearch.clone()
            },
        };
        let ip = Ipv6 {
            src: LINK_LOCAL,
            dst: ALL_NODES,
            proto: PROTO_ICMPV6,
            hop_limit: 255,
        };
        let f = icmpv6_frame(
            multicast_mac(ALL_NODES),
            GATEWAY_MAC,
            ip,
            Icmpv6::ROUTER_ADVERT,
            0,
            &ra.body(),
        );
        self.push(f);
    }

    /// The periodic advertisement, once a guest is there.
    pub(super) fn ndp_timers(&mut self, now: Instant) {
        if self.cfg.ipv6 && self.out.guest_mac.is_some() && self.next_ra.is_none_or(|t| now >= t) {
            self.router_advert(now);
        }
    }
}
