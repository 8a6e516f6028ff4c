//! TCP translation, the stack's side: segments from the guest, the host socket's events,
//! frames toward the guest, timers. The per-connection state and its constants are
//! [`crate::tcp::TcpFlow`]; the flows live in `Stack::tcp`, keyed by id, with
//! `Stack::by_tcp_key` indexing them by (guest, remote) socket address, IPv4 and IPv6 alike:
//! only the headers of the frames differ (`GSO_TCPV4` or `GSO_TCPV6` when offloaded).

use super::*;

impl Stack {
    pub fn tcp_flows(&self) -> usize {
        self.tcp.len()
    }

    pub(super) fn tcp_out(
        &mut self,
        remote: SocketAddr,
        guest: SocketAddr,
        t: Tcp,
        payload: &[u8],
    ) {
        let Some(mac) = self.guest_mac else {
            // The guest has not been heard yet: ask for it (IPv4; an IPv6 guest is known
            // only from what it sent, which taught the MAC).
            if let IpAddr::V4(g) = guest.ip() {
                self.who_has(g);
            }
            return;
        };
        let ip = ip_to_guest(&mut self.ip_id, remote.ip(), guest.ip(), PROTO_TCP);
        self.push(tcp_frame(eth_to_guest(mac), ip, &t, payload));
    }

    /// Answer a segment that belongs to no connection with RST (RFC 793 "reset generation").
    pub(super) fn tcp_reset(&mut self, guest: SocketAddr, remote: SocketAddr, t: &Tcp, len: usize) {
        if t.flags & Tcp::RST != 0 {
            return;
        }
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
                ack: (Seq(t.seq) + len as u32 + syn_fin).0,
                flags: Tcp::RST | Tcp::ACK,
                ..Tcp::default()
            }
        };
        self.tcp_out(remote, guest, r, &[]);
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
            return self.tcp_reset(guest, remote, &t, data.len());
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
            if t.flags & (Tcp::SYN | Tcp::ACK) == Tcp::SYN | Tcp::ACK && Seq(t.ack) == f.isn + 1 {
                f.rcv_nxt = Seq(t.seq) + 1;
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
            let acked = Seq(t.ack) - f.snd_una;
            let sent = f.snd_nxt - f.snd_una;
            if acked <= sent {
                let data_acked = acked.min(f.in_flight()) as usize;
                if data_acked > 0 {
                    io.tcp_consume(id, data_acked);
                }
                f.snd_una = Seq(t.ack);
                if f.fin_seq.is_some_and(|s| Seq(t.ack) == s + 1) {
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
            if Seq(t.seq) == f.rcv_nxt && !f.guest_fin {
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
                f.rcv_nxt += take as u32;
                if take == data.len() && t.flags & Tcp::FIN != 0 {
                    f.rcv_nxt += 1;
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

    pub(super) fn tcp_open(
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
            return self.tcp_reset(guest, remote, &t, 0);
        };
        if self.tcp.len() >= MAX_TCP_FLOWS {
            self.stats.refused += 1;
            return self.tcp_reset(guest, remote, &t, 0);
        }
        let id = self.alloc_id();
        let started = match &target {
            GuestFwdTarget::Addr(a) => io.tcp_connect(id, *a),
            GuestFwdTarget::Command(argv) => io.tcp_command(id, argv).map(|()| false),
        };
        let Ok(connected) = started else {
            self.stats.refused += 1;
            return self.tcp_reset(guest, remote, &t, 0);
        };
        let nanos = now.elapsed().as_nanos() as u32 ^ (id.wrapping_mul(2_654_435_761));
        let isn = Seq(nanos ^ (self.ip_id as u32) << 16);
        let mss = MAX_MSS;
        let flow = TcpFlow {
            guest,
            remote,
            phase: Phase::Connecting,
            isn,
            rcv_nxt: Seq(t.seq) + 1,
            to_host: Vec::new(),
            guest_fin: false,
            host_shut: false,
            snd_una: isn + 1,
            snd_nxt: isn + 1,
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
        let flow = TcpFlow {
            guest,
            remote,
            phase: Phase::SynSent,
            isn,
            rcv_nxt: Seq(0),
            to_host: Vec::new(),
            guest_fin: false,
            host_shut: false,
            snd_una: isn + 1,
            snd_nxt: isn + 1,
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
    pub(super) fn tcp_syn(&mut self, id: FlowId) {
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

    pub(super) fn tcp_synack(&mut self, id: FlowId) {
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

    pub(super) fn tcp_ack(&mut self, id: FlowId) {
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
                ack: f.rcv_nxt.0,
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

    pub(super) fn tcp_flush_to_host(&mut self, id: FlowId, io: &mut dyn HostIo) {
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
    pub(super) fn tcp_push(&mut self, id: FlowId, now: Instant, io: &mut dyn HostIo) {
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
            if let IpAddr::V4(guest) = f.guest.ip() {
                self.who_has(guest);
            }
            return;
        };
        let mss = f.guest_mss.max(1) as usize;
        let max_seg = if *offload {
            GSO_MAX_PAYLOAD.max(mss)
        } else {
            mss
        };
        let eth = eth_to_guest(mac);
        let v4 = f.remote.is_ipv4();
        let hlen = if v4 { TCP_FRAME_HLEN } else { TCP6_FRAME_HLEN };
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
                Vec::with_capacity(hlen + n)
            };
            frame.resize(hlen, 0);
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
            frame.truncate(hlen + got);
            // A short read in a big buffer: moved to one of its size, so that frames
            // waiting for the guest cost what they carry.
            if got <= SMALL_PAYLOAD && frame.capacity() >= FRAME_BUF {
                let big = std::mem::replace(&mut frame, Vec::with_capacity(hlen + got));
                frame.extend_from_slice(&big);
                give_back(spare, big);
            }
            let ip = ip_to_guest(ip_id, f.remote.ip(), f.guest.ip(), PROTO_TCP);
            let t = f.segment(Tcp::ACK | Tcp::PSH, f.snd_nxt);
            let gso = offload.then(|| VirtioNetHdr {
                flags: VirtioNetHdr::NEEDS_CSUM,
                gso_type: match (got > mss, v4) {
                    (false, _) => VirtioNetHdr::GSO_NONE,
                    (true, true) => VirtioNetHdr::GSO_TCPV4,
                    (true, false) => VirtioNetHdr::GSO_TCPV6,
                },
                hdr_len: hlen as u16,
                gso_size: if got > mss { mss as u16 } else { 0 },
                csum_start: (hlen - 20) as u16,
                csum_offset: 16,
            });
            tcp_frame_in_place(&mut frame, eth, ip, &t, gso.is_some());
            push_frame(to_guest, to_guest_bytes, stats, frame, gso);
            f.snd_nxt += got as u32;
            sent = true;
        }
        if broken {
            // The host connection broke: reset the guest's.
            let t = Tcp {
                src_port: f.remote.port(),
                dst_port: f.guest.port(),
                seq: f.snd_nxt.0,
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
            f.snd_nxt += 1;
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

    pub(super) fn tcp_maybe_done(&mut self, id: FlowId, io: &mut dyn HostIo) {
        if self.tcp.get(&id).is_some_and(|f| f.done()) {
            // An acknowledgement still owed (the guest's FIN's) goes before the flow does.
            if self.tcp.get(&id).is_some_and(|f| f.ack_due.is_some()) {
                self.tcp_ack(id);
            }
            io.tcp_close(id, false);
            self.tcp_forget(id);
        }
    }

    pub(super) fn tcp_forget(&mut self, id: FlowId) {
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
}
