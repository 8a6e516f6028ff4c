//! UDP translated onto host sockets, and the flow table UDP and ICMP echo share: one
//! connected host socket per (guest address, remote address), IPv4 and IPv6 alike; the
//! gateway stands for the host's loopback, the DNS address's port 53 for the first upstream
//! resolver (of either family). Also the
//! datagrams of host-side forwards (`udp_inbound`) and everything host sockets hand back
//! (`from_host`).

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) struct UdpFlow {
    pub(super) guest: SocketAddr,
    /// The remote end as the guest sees it.
    pub(super) remote: SocketAddr,
    pub(super) last: Instant,
    pub(super) idle: Duration,
    /// An ICMP echo flow: `guest` holds the guest's echo identifier as its port, `remote`
    /// port 0.
    pub(super) icmp: bool,
}

impl Stack {
    pub(super) fn udp(
        &mut self,
        eth: Eth,
        ip: Ipv4,
        p: &[u8],
        verify: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let Some((udp, data)) = Udp::parse_with(&ip, p, verify) else {
            return self.drop_frame(DropReason::BadUdp);
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
        let _ = eth;
        let guest = SocketAddr::V4(SocketAddrV4::new(ip.src, udp.src_port));
        let remote = SocketAddr::V4(SocketAddrV4::new(ip.dst, udp.dst_port));
        self.udp_datagram(guest, remote, data, now, io);
    }

    /// A datagram from the guest, either family, for its flow (opened if need be).
    pub(super) fn udp_datagram(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let id = match self.by_key.get(&(guest, remote)) {
            Some(&id) => id,
            // Restricted guests open no flows; answers on forwarded ones still go.
            None if self.cfg.restrict => return self.drop_frame(DropReason::Restricted),
            None => match self.open_flow(guest, remote, now, io) {
                Some(id) => id,
                None => return,
            },
        };
        if let Some(f) = self.flows.get_mut(&id) {
            f.last = now;
        }
        if io.udp_send(id, data).is_err() {
            self.stats.drop(DropReason::HostSend);
        }
    }

    /// The key map of UDP flows, or of ICMP echo flows.
    pub(super) fn flow_keys(
        &mut self,
        icmp: bool,
    ) -> &mut HashMap<(SocketAddr, SocketAddr), FlowId> {
        if icmp {
            &mut self.by_icmp_key
        } else {
            &mut self.by_key
        }
    }

    /// Record flow `id` under its key.
    pub(super) fn add_flow(&mut self, id: FlowId, f: UdpFlow) {
        self.flow_keys(f.icmp).insert((f.guest, f.remote), id);
        self.flows.insert(id, f);
    }

    pub(super) fn alloc_id(&mut self) -> FlowId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        if self.next_id == 0 || self.next_id >= FIRST_DRIVER_ID {
            self.next_id = 1;
        }
        id
    }

    /// Where a guest datagram to `remote` goes on the host, if anywhere.
    pub(super) fn target(&self, remote: SocketAddr) -> Option<SocketAddr> {
        match remote {
            SocketAddr::V4(r) => self.target4(r),
            SocketAddr::V6(r) => self.target6(r),
        }
    }

    fn target4(&self, remote: SocketAddrV4) -> Option<SocketAddr> {
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

    pub(super) fn open_flow(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        io: &mut dyn HostIo,
    ) -> Option<FlowId> {
        let Some(target) = self.target(remote) else {
            self.drop_frame(DropReason::Unroutable);
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
        let idle = if self.is_dns(remote.ip()) {
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

    /// A datagram arrived on a forwarded host UDP port from a client at port `client_port`:
    /// it goes to `guest`, from the gateway address of its family with the client's port. Returns the
    /// flow's id and whether it is new (the driver then remembers where replies go); `None`
    /// when the flow limit is reached.
    pub fn udp_inbound(
        &mut self,
        guest: SocketAddr,
        client_port: u16,
        data: &[u8],
        now: Instant,
    ) -> Option<(FlowId, bool)> {
        let host = match guest {
            SocketAddr::V4(_) => IpAddr::V4(self.cfg.host),
            SocketAddr::V6(_) => IpAddr::V6(self.cfg.ipv6_host),
        };
        let remote = SocketAddr::new(host, client_port);
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
        let Some(mac) = self.out.guest_mac else {
            if let SocketAddr::V4(g) = flow.guest {
                self.who_has(*g.ip());
            }
            return;
        };
        if flow.icmp {
            return self.icmp_reply(flow, mac, data);
        }
        let udp = Udp {
            src_port: flow.remote.port(),
            dst_port: flow.guest.port(),
        };
        match (flow.remote, flow.guest) {
            (SocketAddr::V4(r), SocketAddr::V4(g)) => {
                // Datagrams larger than one frame would need IP fragmentation: not done,
                // dropped.
                if data.len() + 28 > self.cfg.mtu as usize {
                    return self.stats.drop(DropReason::TooBigForGuest);
                }
                let (eth, ip) = self.headers_to_guest(mac, *r.ip(), *g.ip(), PROTO_UDP);
                self.push(udp_frame(eth, ip, udp, data));
            }
            (SocketAddr::V6(r), SocketAddr::V6(g)) => self.udp6_to_guest(mac, r, g, udp, data),
            _ => {}
        }
    }

    /// Whether `a` is one of the stack's DNS addresses.
    pub(super) fn is_dns(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => a == self.cfg.dns,
            IpAddr::V6(a) => a == self.cfg.ipv6_dns,
        }
    }

    /// As libslirp: every address of the prefix but the DNS one stands for the host's
    /// `::1`; the DNS address's port 53 for the first upstream resolver (of either family);
    /// link-local, multicast and loopback lead nowhere; the rest is itself.
    fn target6(&self, remote: SocketAddrV6) -> Option<SocketAddr> {
        let ip = *remote.ip();
        if ip == self.cfg.ipv6_dns {
            return (remote.port() == 53)
                .then(|| self.cfg.dns_upstream.first().copied())
                .flatten();
        }
        if self.cfg.in_prefix6(ip) {
            return Some(SocketAddr::from((Ipv6Addr::LOCALHOST, remote.port())));
        }
        if ip.is_multicast()
            || ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_unicast_link_local()
        {
            return None;
        }
        Some(SocketAddr::V6(remote))
    }
}
