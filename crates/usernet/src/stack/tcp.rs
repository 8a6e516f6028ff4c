//! The table of TCP flows: `Stack::tcp` holds them by id, `Stack::by_tcp_key` indexes them
//! by (guest, remote) socket address, IPv4 and IPv6 alike; here a new guest connection is
//! placed (guest forwards, `restrict`, where it goes on the host, the flow limit), forwarded
//! host connections are added, events are routed to their flow, and what each event's
//! [`Outcome`] asks for is done (flows blocked on the queue toward the guest remembered,
//! finished ones forgotten). The per-connection state machine is [`crate::tcp::TcpFlow`]'s.

use super::*;
use crate::tcp::{reset, Outcome};

impl Stack {
    pub fn tcp_flows(&self) -> usize {
        self.tcp.len()
    }

    /// A segment from the guest, over either family.
    pub(super) fn tcp_from_guest(
        &mut self,
        ip: IpHeader,
        p: &[u8],
        verify: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        let Some((t, data)) = Tcp::parse_ip(&ip, p, verify) else {
            return self.drop_frame(DropReason::BadTcp);
        };
        let guest = SocketAddr::new(ip.src(), t.src_port);
        let remote = SocketAddr::new(ip.dst(), t.dst_port);
        let Some(&id) = self.by_tcp_key.get(&(guest, remote)) else {
            if t.flags & (Tcp::SYN | Tcp::ACK | Tcp::RST) == Tcp::SYN {
                return self.tcp_open(guest, remote, t, now, io);
            }
            return reset(&mut self.out, guest, remote, &t, data.len());
        };
        self.tcp_event(id, |f, out| f.on_segment(&t, data, now, io, out));
    }

    /// Run one event on flow `id` and do what its outcome asks.
    fn tcp_event(&mut self, id: FlowId, ev: impl FnOnce(&mut TcpFlow, &mut Egress) -> Outcome) {
        let Some(f) = self.tcp.get_mut(&id) else {
            return;
        };
        match ev(f, &mut self.out) {
            Outcome::Keep => {}
            Outcome::Blocked => self.blocked.push(id),
            Outcome::Closed => self.tcp_forget(id),
        }
    }

    /// A guest's SYN for a connection the table does not have.
    fn tcp_open(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        t: Tcp,
        now: Instant,
        io: &mut dyn HostIo,
    ) {
        // guestfwd rules apply even to a restricted guest.
        let fwd = self
            .cfg
            .guestfwd
            .iter()
            .find(|g| SocketAddr::V4(g.server) == remote)
            .map(|g| g.target.clone());
        let target = match fwd {
            Some(t) => Some(t),
            None if self.cfg.restrict => None,
            None => self.target(remote).map(GuestFwdTarget::Addr),
        };
        let Some(target) = target else {
            return reset(&mut self.out, guest, remote, &t, 0);
        };
        if self.tcp.len() >= MAX_TCP_FLOWS {
            self.stats.refused += 1;
            return reset(&mut self.out, guest, remote, &t, 0);
        }
        let id = self.alloc_id();
        let started = match &target {
            GuestFwdTarget::Addr(a) => io.tcp_connect(id, *a),
            GuestFwdTarget::Command(argv) => io.tcp_command(id, argv).map(|()| false),
        };
        let Ok(connected) = started else {
            self.stats.refused += 1;
            return reset(&mut self.out, guest, remote, &t, 0);
        };
        let nanos = now.elapsed().as_nanos() as u32 ^ (id.wrapping_mul(2_654_435_761));
        let isn = Seq(nanos ^ (self.out.ip_id() as u32) << 16);
        self.tcp
            .insert(id, TcpFlow::outbound(id, guest, remote, &t, isn, now));
        self.by_tcp_key.insert((guest, remote), id);
        if connected {
            self.tcp_connected(id, true, now, io);
        }
    }

    /// A host connection arrived on a forwarded port: it goes to `guest`, appearing to come
    /// from the gateway address of `guest`'s family (`host` or `ipv6_host`) with the
    /// client's port (as libslirp shows a loopback client). Returns the flow's id; the
    /// driver keeps the accepted socket under it. `None` when the flow limit is reached (the
    /// driver closes the socket).
    pub fn tcp_inbound(
        &mut self,
        guest: SocketAddr,
        client_port: u16,
        now: Instant,
    ) -> Option<FlowId> {
        if self.tcp.len() >= MAX_TCP_FLOWS {
            self.stats.refused += 1;
            return None;
        }
        let host = match guest {
            SocketAddr::V4(_) => IpAddr::V4(self.cfg.host),
            SocketAddr::V6(_) => IpAddr::V6(self.cfg.ipv6_host),
        };
        let remote = SocketAddr::new(host, client_port);
        if self.by_tcp_key.contains_key(&(guest, remote)) {
            return None;
        }
        let id = self.alloc_id();
        let isn =
            Seq((now.elapsed().as_nanos() as u32) ^ id.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995);
        let flow = TcpFlow::inbound(id, guest, remote, isn, now, &mut self.out);
        self.tcp.insert(id, flow);
        self.by_tcp_key.insert((guest, remote), id);
        Some(id)
    }

    /// The host connect of flow `id` finished.
    pub fn tcp_connected(&mut self, id: FlowId, ok: bool, now: Instant, io: &mut dyn HostIo) {
        self.tcp_event(id, |f, out| f.on_connected(ok, now, io, out));
    }

    /// The host socket of flow `id` has new data, or an error, or (`hup`) the end of the
    /// stream arrived, maybe together with data.
    pub fn tcp_readable(&mut self, id: FlowId, hup: bool, now: Instant, io: &mut dyn HostIo) {
        self.tcp_event(id, |f, out| f.on_readable(hup, now, io, out));
    }

    /// The host socket of flow `id` can take more.
    pub fn tcp_writable(&mut self, id: FlowId, now: Instant, io: &mut dyn HostIo) {
        self.tcp_event(id, |f, out| f.on_writable(now, io, out));
    }

    /// Flow `id` stopped at the queue toward the guest, which has drained.
    pub(super) fn tcp_resume(&mut self, id: FlowId, now: Instant, io: &mut dyn HostIo) {
        self.tcp_event(id, |f, out| f.on_resume(now, io, out));
    }

    fn tcp_forget(&mut self, id: FlowId) {
        if let Some(f) = self.tcp.remove(&id) {
            self.by_tcp_key.remove(&(f.guest, f.remote));
        }
    }

    /// Retransmissions, delayed acknowledgements and idle connections. Call when
    /// [`Stack::next_deadline`] passes.
    pub fn tcp_timers(&mut self, now: Instant, io: &mut dyn HostIo) {
        let due: Vec<FlowId> = self
            .tcp
            .iter()
            .filter(|(_, f)| {
                f.deadline().is_some_and(|t| t <= now) || now.duration_since(f.last) >= IDLE
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.tcp_event(id, |f, out| f.on_timer(now, io, out));
        }
    }
}
