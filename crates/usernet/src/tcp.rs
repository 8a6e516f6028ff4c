//! TCP translated onto host sockets (the guest connects out): the stack speaks TCP to the
//! guest only as far as needed to move bytes to and from one host socket per connection —
//! the host kernel's TCP does the real work toward the peer (passt's design). IPv4 and IPv6
//! alike: a flow's addresses are `SocketAddr`s of one family.
//!
//! What is kept per flow (sequence numbers are [`Seq`], modulo 2^32):
//! - guest → host: `rcv_nxt` (next byte expected from the guest) and `to_host`, bytes the
//!   guest sent and we acknowledged but the host socket has not taken yet (at most
//!   [`RCV_BUF`]; the window we advertise is the room left, scaled by [`OUR_WSCALE`] when
//!   the guest offered window scaling, else capped at 65535);
//! - host → guest: nothing is copied out of the host socket until the guest acknowledges
//!   it: segments are peeked from the socket (from `snd_nxt - snd_una` bytes past its oldest
//!   byte) straight into frames, and acknowledged bytes are then consumed. Kept: `snd_una`,
//!   `snd_nxt` (at most [`MAX_IN_FLIGHT`] apart) and the guest's window (scaled when it
//!   offered window scaling).
//!
//! Implemented: the three-way handshake once the host connect succeeds (RST if it fails);
//! data both ways with the guest's MSS and window respected; go-back-N retransmission toward
//! the guest on a timeout doubling from [`RTO_MIN`] to [`RTO_MAX`] (no SACK, no
//! timestamps); FIN and RST both ways; idle flows closed after [`IDLE`].
//! Left out, on purpose: urgent data, SACK, PAWS, congestion control toward the guest (the
//! virtual link does not lose frames except when a queue is full, which retransmission
//! covers), keeping TIME_WAIT (the host socket holds the real connection's state).
//!
//! Shape: the per-connection state machine is [`TcpFlow`]'s: each event (a segment from the
//! guest, the host connect finishing, the host socket readable or writable, a timer) is a
//! method taking the host I/O ([`HostIo`]) and the way to the guest (`stack::Egress`) and
//! returning an [`Outcome`]. The table of flows (map, key index, limits, the blocked list,
//! where a new connection goes) is the stack's, in `stack/tcp.rs`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netdevd_wire::packet::{tcp_frame_in_place, Tcp, PROTO_TCP, TCP6_FRAME_HLEN, TCP_FRAME_HLEN};
use netdevd_wire::VirtioNetHdr;

use crate::stack::{Egress, FlowId, HostIo, GSO_MAX_PAYLOAD, MAX_MSS};

/// Bytes from the guest buffered for a slow host socket.
pub const RCV_BUF: usize = 128 * 1024;
/// The window scale we offer (RFC 7323): windows up to 1 MiB, so that [`RCV_BUF`] can be
/// advertised whole.
pub const OUR_WSCALE: u8 = 4;
/// Bytes sent to the guest and not yet acknowledged, at most (they stay in the host
/// socket's receive buffer until then).
pub const MAX_IN_FLIGHT: usize = 2 << 20;
/// How long the acknowledgement of a small segment from the guest waits for data to ride
/// on (a reply from the host usually comes sooner); a second segment is acknowledged at once.
pub const DELAYED_ACK: Duration = Duration::from_millis(1);
/// Segments up to this size may have their acknowledgement delayed.
pub const DELAYED_ACK_MAX: usize = 1024;
pub const RTO_MIN: Duration = Duration::from_millis(200);
pub const RTO_MAX: Duration = Duration::from_secs(4);
/// A flow with no traffic for this long is closed.
pub const IDLE: Duration = Duration::from_secs(7200);

/// A TCP sequence number: arithmetic modulo 2^32 (RFC 793 §3.3), in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Seq(pub u32);

impl Seq {
    /// Whether `self` comes before `other` (less than half the sequence space behind).
    pub fn is_before(self, other: Seq) -> bool {
        (self.0.wrapping_sub(other.0) as i32) < 0
    }
}

impl std::ops::Add<u32> for Seq {
    type Output = Seq;
    fn add(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }
}

impl std::ops::AddAssign<u32> for Seq {
    fn add_assign(&mut self, n: u32) {
        *self = *self + n;
    }
}

/// The distance from `earlier` forward to `self`.
impl std::ops::Sub for Seq {
    type Output = u32;
    fn sub(self, earlier: Seq) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The host connect is in progress; the guest's SYN waits for it.
    Connecting,
    /// A forwarded host connection: our SYN went to the guest, its SYN-ACK is awaited.
    SynSent,
    Open,
}

/// SYNs sent to the guest for a forwarded connection before giving up.
pub const SYN_RETRIES: u32 = 6;

/// What the table does with a flow after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: the flow goes on.
    Keep,
    /// The flow has data to send and stopped because the queue toward the guest is full:
    /// it goes on when the queue drains (`Stack::resume`).
    Blocked,
    /// The flow is over and its host socket closed: the table forgets it.
    Closed,
}

impl Outcome {
    /// `self`, unless the flow has since closed.
    fn and(self, later: Outcome) -> Outcome {
        if later == Outcome::Closed {
            Outcome::Closed
        } else {
            self
        }
    }
}

/// One translated connection.
#[derive(Debug)]
pub struct TcpFlow {
    /// Its id, under which the host socket is known to [`HostIo`].
    pub id: FlowId,
    pub guest: SocketAddr,
    /// The remote end as the guest sees it (the same family as `guest`).
    pub remote: SocketAddr,
    pub phase: Phase,
    /// Our initial sequence number (the SYN-ACK's).
    pub isn: Seq,
    /// Next sequence number expected from the guest.
    pub rcv_nxt: Seq,
    /// Acknowledged guest bytes the host socket has not taken yet.
    pub to_host: Vec<u8>,
    /// The guest's FIN arrived (in sequence).
    pub guest_fin: bool,
    /// The host socket's sending side was shut down after `to_host` drained.
    pub host_shut: bool,
    /// Oldest byte not yet acknowledged by the guest.
    pub snd_una: Seq,
    /// Next sequence number to send.
    pub snd_nxt: Seq,
    /// The host closed its side; a FIN follows the data.
    pub host_eof: bool,
    /// The host socket may hold bytes not sent yet: set by a readable event (edge-triggered)
    /// and by going back to retransmit, cleared when a peek finds nothing new, so that
    /// segments from the guest do not cost a peek each.
    pub host_data: bool,
    /// The host socket reported the end of its stream (the FIN may still be behind data).
    pub host_hup: bool,
    /// Sequence number of our FIN, once sent.
    pub fin_seq: Option<Seq>,
    pub fin_acked: bool,
    /// The guest's window in bytes (already scaled).
    pub guest_win: u32,
    pub guest_wscale: Option<u8>,
    /// The shift of the windows we advertise (0 unless both sides offered scaling).
    pub our_wscale: u8,
    pub guest_mss: u16,
    pub rto: Duration,
    /// A delayed acknowledgement is owed to the guest by then.
    pub ack_due: Option<Instant>,
    pub rto_at: Option<Instant>,
    pub last: Instant,
    /// SYNs sent (forwarded connections).
    pub syns: u32,
}

impl TcpFlow {
    /// A guest connection: its SYN `syn` arrived and the host connect starts.
    pub fn outbound(
        id: FlowId,
        guest: SocketAddr,
        remote: SocketAddr,
        syn: &Tcp,
        isn: Seq,
        now: Instant,
    ) -> TcpFlow {
        TcpFlow {
            id,
            guest,
            remote,
            phase: Phase::Connecting,
            isn,
            rcv_nxt: Seq(syn.seq) + 1,
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
            guest_win: syn.window as u32,
            guest_wscale: syn.wscale,
            our_wscale: if syn.wscale.is_some() { OUR_WSCALE } else { 0 },
            guest_mss: syn.mss.unwrap_or(536).min(MAX_MSS),
            rto: RTO_MIN,
            ack_due: None,
            rto_at: None,
            last: now,
            syns: 0,
        }
    }

    /// A forwarded host connection into the guest: our SYN goes out now.
    pub(crate) fn inbound(
        id: FlowId,
        guest: SocketAddr,
        remote: SocketAddr,
        isn: Seq,
        now: Instant,
        out: &mut Egress,
    ) -> TcpFlow {
        let f = TcpFlow {
            id,
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
        f.send_syn(out);
        f
    }

    /// Bytes sent and not acknowledged.
    pub fn in_flight(&self) -> u32 {
        (self.snd_nxt - self.snd_una).saturating_sub(self.fin_seq.is_some() as u32)
    }

    /// The window we advertise (scaled).
    pub fn our_window(&self) -> u16 {
        ((RCV_BUF - self.to_host.len()) >> self.our_wscale).min(65535) as u16
    }

    /// The window of a SYN or SYN-ACK, never scaled.
    pub fn syn_window(&self) -> u16 {
        (RCV_BUF - self.to_host.len()).min(65535) as u16
    }

    /// A segment of this flow toward the guest: ports, acknowledgement and window filled in.
    pub fn segment(&self, flags: u8, seq: Seq) -> Tcp {
        Tcp {
            src_port: self.remote.port(),
            dst_port: self.guest.port(),
            seq: seq.0,
            ack: self.rcv_nxt.0,
            flags,
            window: self.our_window(),
            ..Default::default()
        }
    }

    /// Both directions are finished: the flow can go.
    pub fn done(&self) -> bool {
        self.guest_fin && self.host_shut && self.fin_acked
    }

    /// When the flow's next timer runs out, if it has one running.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.rto_at, self.ack_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send(&self, out: &mut Egress, t: Tcp) {
        out.tcp(self.remote, self.guest, &t, &[]);
    }

    /// Our SYN toward the guest (forwarded connections).
    fn send_syn(&self, out: &mut Egress) {
        let t = Tcp {
            ack: 0,
            mss: Some(MAX_MSS),
            wscale: Some(OUR_WSCALE),
            window: self.syn_window(),
            ..self.segment(Tcp::SYN, self.isn)
        };
        self.send(out, t);
    }

    fn send_synack(&self, out: &mut Egress) {
        // Window scaling is on only if both offer it; a SYN's own window is never scaled.
        let t = Tcp {
            mss: Some(MAX_MSS),
            wscale: self.guest_wscale.map(|_| OUR_WSCALE),
            window: self.syn_window(),
            ..self.segment(Tcp::SYN | Tcp::ACK, self.isn)
        };
        self.send(out, t);
    }

    fn send_ack(&mut self, out: &mut Egress) {
        self.ack_due = None;
        let t = self.segment(Tcp::ACK, self.snd_nxt);
        self.send(out, t);
    }

    /// Close the host socket, resetting it.
    fn abort(&mut self, io: &mut dyn HostIo) -> Outcome {
        io.tcp_close(self.id, true);
        Outcome::Closed
    }

    /// A segment from the guest (`data` its payload).
    pub(crate) fn on_segment(
        &mut self,
        t: &Tcp,
        data: &[u8],
        now: Instant,
        io: &mut dyn HostIo,
        out: &mut Egress,
    ) -> Outcome {
        if t.flags & Tcp::RST != 0 {
            return self.abort(io);
        }
        self.last = now;
        if self.phase == Phase::SynSent {
            // Our SYN's answer: the connection is open once it acknowledges our SYN.
            if t.flags & (Tcp::SYN | Tcp::ACK) == Tcp::SYN | Tcp::ACK && Seq(t.ack) == self.isn + 1
            {
                self.rcv_nxt = Seq(t.seq) + 1;
                self.guest_wscale = t.wscale;
                self.our_wscale = if t.wscale.is_some() { OUR_WSCALE } else { 0 };
                self.guest_win = (t.window as u32) << t.wscale.unwrap_or(0);
                self.guest_mss = t.mss.unwrap_or(536).min(MAX_MSS);
                self.phase = Phase::Open;
                self.rto_at = None;
                self.rto = RTO_MIN;
                self.send_ack(out);
                // What the host client sent before the guest answered has raised its only
                // readable edge already: send it now.
                return self.push_and_finish(now, io, out);
            }
            return Outcome::Keep;
        }
        if t.flags & Tcp::SYN != 0 {
            // A retransmitted SYN: answer again once connected.
            if self.phase == Phase::Open {
                self.send_synack(out);
            }
            return Outcome::Keep;
        }
        if self.phase == Phase::Connecting {
            return Outcome::Keep;
        }
        if t.flags & Tcp::ACK != 0 {
            let acked = Seq(t.ack) - self.snd_una;
            let sent = self.snd_nxt - self.snd_una;
            if acked <= sent {
                let data_acked = acked.min(self.in_flight()) as usize;
                if data_acked > 0 {
                    io.tcp_consume(self.id, data_acked);
                }
                self.snd_una = Seq(t.ack);
                if self.fin_seq.is_some_and(|s| Seq(t.ack) == s + 1) {
                    self.fin_acked = true;
                }
                if acked > 0 {
                    self.rto = RTO_MIN;
                    self.rto_at = (self.snd_nxt != self.snd_una).then_some(now + self.rto);
                }
            }
            self.guest_win = (t.window as u32) << self.guest_wscale.unwrap_or(0);
        }
        let mut ack_now = false;
        let mut may_delay = false;
        if !data.is_empty() || t.flags & Tcp::FIN != 0 {
            ack_now = true;
            if Seq(t.seq) == self.rcv_nxt && !self.guest_fin {
                may_delay = self.take_from_guest(data, t.flags & Tcp::FIN != 0, now, io);
            }
        }
        self.flush_to_host(io);
        if ack_now && !may_delay {
            self.send_ack(out);
        }
        self.push_and_finish(now, io, out)
    }

    /// In-sequence bytes (and maybe the FIN) from the guest: written straight from the frame
    /// to the host socket, only what it does not take kept (within [`RCV_BUF`]). Returns
    /// whether the acknowledgement may wait ([`DELAYED_ACK`]).
    fn take_from_guest(
        &mut self,
        data: &[u8],
        fin: bool,
        now: Instant,
        io: &mut dyn HostIo,
    ) -> bool {
        let mut take = 0;
        if self.to_host.is_empty() && !data.is_empty() {
            take = io.tcp_send(self.id, data).unwrap_or(0);
        }
        let room = RCV_BUF - self.to_host.len();
        let more = (data.len() - take).min(room);
        if more > 0 && self.to_host.capacity() == 0 {
            // Its whole size at once: growing by doubling would hold the old and the new
            // buffer at the same time.
            self.to_host.reserve_exact(RCV_BUF);
        }
        self.to_host.extend_from_slice(&data[take..take + more]);
        let take = take + more;
        self.rcv_nxt += take as u32;
        if take == data.len() && fin {
            self.rcv_nxt += 1;
            self.guest_fin = true;
        }
        // A small in-sequence segment the host socket took whole: its ACK can wait for the
        // reply to ride on (as a receiver's delayed ACK does), once. So can a FIN's: the
        // host's FIN usually follows at once and carries it.
        let may_delay = take == data.len()
            && data.len() <= DELAYED_ACK_MAX
            && self.to_host.is_empty()
            && self.ack_due.is_none();
        if may_delay {
            self.ack_due = Some(now + DELAYED_ACK);
        }
        may_delay
    }

    /// The host connect finished (`ok`: connected).
    pub(crate) fn on_connected(
        &mut self,
        ok: bool,
        now: Instant,
        io: &mut dyn HostIo,
        out: &mut Egress,
    ) -> Outcome {
        if !ok {
            let t = Tcp {
                src_port: self.remote.port(),
                dst_port: self.guest.port(),
                ack: self.rcv_nxt.0,
                flags: Tcp::RST | Tcp::ACK,
                ..Tcp::default()
            };
            self.send(out, t);
            return self.abort(io);
        }
        self.phase = Phase::Open;
        self.last = now;
        self.send_synack(out);
        Outcome::Keep
    }

    /// The host socket has new data, or an error, or (`hup`) the end of the stream arrived,
    /// maybe together with data.
    pub(crate) fn on_readable(
        &mut self,
        hup: bool,
        now: Instant,
        io: &mut dyn HostIo,
        out: &mut Egress,
    ) -> Outcome {
        self.last = now;
        self.host_data = true;
        self.host_hup |= hup;
        self.push_and_finish(now, io, out)
    }

    /// The host socket can take more.
    pub(crate) fn on_writable(
        &mut self,
        now: Instant,
        io: &mut dyn HostIo,
        out: &mut Egress,
    ) -> Outcome {
        let before = self.to_host.len();
        self.flush_to_host(io);
        // The window opened: tell the guest.
        if self.to_host.len() < before {
            self.send_ack(out);
        }
        self.push_and_finish(now, io, out)
    }

    /// The queue toward the guest drained after the flow stopped at it.
    pub(crate) fn on_resume(
        &mut self,
        now: Instant,
        io: &mut dyn HostIo,
        out: &mut Egress,
    ) -> Outcome {
        self.push_and_finish(now, io, out)
    }

    /// The flow's timers, at `now`: a delayed acknowledgement due, retransmission (of our
    /// SYN, or go-back-N from the oldest unacknowledged byte), idleness.
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        io: &mut dyn HostIo,
        out: &mut Egress,
    ) -> Outcome {
        let mut outcome = Outcome::Keep;
        if self.ack_due.is_some_and(|t| t <= now) {
            self.send_ack(out);
        }
        if self.rto_at.is_some_and(|t| t <= now) {
            if self.phase == Phase::SynSent {
                if self.syns >= SYN_RETRIES {
                    return self.abort(io);
                }
                self.syns += 1;
                self.rto = (self.rto * 2).min(RTO_MAX);
                self.rto_at = Some(now + self.rto);
                self.send_syn(out);
            } else {
                self.snd_nxt = self.snd_una;
                self.host_data = true;
                if !self.fin_acked {
                    self.fin_seq = None;
                }
                self.rto = (self.rto * 2).min(RTO_MAX);
                self.rto_at = None;
                outcome = self.push(now, io, out);
                if outcome == Outcome::Closed {
                    return outcome;
                }
            }
        }
        if now.duration_since(self.last) >= IDLE {
            return self.abort(io);
        }
        outcome
    }

    fn flush_to_host(&mut self, io: &mut dyn HostIo) {
        if self.phase != Phase::Open {
            return;
        }
        while !self.to_host.is_empty() {
            match io.tcp_send(self.id, &self.to_host) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                }
                Err(_) => break,
            }
        }
        if self.to_host.is_empty() && self.guest_fin && !self.host_shut {
            self.host_shut = true;
            io.tcp_shutdown(self.id);
        }
    }

    fn push_and_finish(&mut self, now: Instant, io: &mut dyn HostIo, out: &mut Egress) -> Outcome {
        let pushed = self.push(now, io, out);
        if pushed == Outcome::Closed {
            return pushed;
        }
        pushed.and(self.finish(io, out))
    }

    /// Both directions are over: an acknowledgement still owed (the guest's FIN's) goes
    /// before the flow does.
    fn finish(&mut self, io: &mut dyn HostIo, out: &mut Egress) -> Outcome {
        if !self.done() {
            return Outcome::Keep;
        }
        if self.ack_due.is_some() {
            self.send_ack(out);
        }
        io.tcp_close(self.id, false);
        Outcome::Closed
    }

    /// Send what the guest's window allows, peeked from the host socket straight into each
    /// frame; a FIN once the socket reports end of stream past everything sent. With
    /// offloads on, one frame carries up to [`GSO_MAX_PAYLOAD`] bytes, cut into the guest's
    /// MSS by whoever receives it. At most [`MAX_IN_FLIGHT`] bytes are unacknowledged.
    fn push(&mut self, now: Instant, io: &mut dyn HostIo, out: &mut Egress) -> Outcome {
        if self.phase != Phase::Open {
            return Outcome::Keep;
        }
        let Some(eth) = out.eth() else {
            if let std::net::IpAddr::V4(guest) = self.guest.ip() {
                out.who_has(guest);
            }
            return Outcome::Keep;
        };
        let mss = self.guest_mss.max(1) as usize;
        let max_seg = if out.offload {
            GSO_MAX_PAYLOAD.max(mss)
        } else {
            mss
        };
        let v4 = self.remote.is_ipv4();
        let hlen = if v4 { TCP_FRAME_HLEN } else { TCP6_FRAME_HLEN };
        let mut outcome = Outcome::Keep;
        let mut sent = false;
        let mut broken = false;
        while self.fin_seq.is_none() && self.host_data {
            let in_flight = self.in_flight() as usize;
            let window = (self.guest_win as usize).saturating_sub(in_flight);
            let n = window
                .min(MAX_IN_FLIGHT.saturating_sub(in_flight))
                .min(max_seg);
            if n == 0 {
                break;
            }
            if out.tcp_full() {
                outcome = Outcome::Blocked;
                break;
            }
            // Headers go in front later; the payload is read straight into the rest, which
            // is never zeroed first (a 64 KiB frame may carry 8 bytes).
            let mut frame = out.buffer(hlen, n);
            let got = match io.tcp_peek(self.id, in_flight, &mut frame, n) {
                Ok(0) => {
                    self.host_eof = true;
                    None
                }
                // Less than asked for: the socket is drained (bytes arriving later raise
                // a new readable edge), so no second peek just to hear "nothing" — unless
                // the end of the stream came, which only a peek that returns 0 shows.
                Ok(got) if got < n && !self.host_hup => {
                    self.host_data = false;
                    Some(got)
                }
                Ok(got) => Some(got.min(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_data = false;
                    None
                }
                Err(_) => {
                    broken = true;
                    None
                }
            };
            let Some(got) = got else {
                out.give_back(frame);
                break;
            };
            frame.truncate(hlen + got);
            let mut frame = out.shrink(frame, hlen);
            let ip = out.ip(self.remote.ip(), self.guest.ip(), PROTO_TCP);
            let t = self.segment(Tcp::ACK | Tcp::PSH, self.snd_nxt);
            let gso = out.offload.then(|| VirtioNetHdr {
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
            out.push(frame, gso);
            self.snd_nxt += got as u32;
            sent = true;
        }
        if broken {
            // The host connection broke: reset the guest's.
            let t = Tcp {
                src_port: self.remote.port(),
                dst_port: self.guest.port(),
                seq: self.snd_nxt.0,
                flags: Tcp::RST,
                ..Tcp::default()
            };
            self.send(out, t);
            return self.abort(io);
        }
        if self.host_eof && self.fin_seq.is_none() {
            self.ack_due = None;
            let t = self.segment(Tcp::ACK | Tcp::FIN, self.snd_nxt);
            self.fin_seq = Some(self.snd_nxt);
            self.snd_nxt += 1;
            if self.rto_at.is_none() {
                self.rto_at = Some(now + self.rto);
            }
            self.send(out, t);
            return outcome;
        }
        if sent {
            // The data carried the acknowledgement.
            self.ack_due = None;
            if self.rto_at.is_none() {
                self.rto_at = Some(now + self.rto);
            }
        }
        outcome
    }
}

/// Answer a segment that belongs to no connection with RST (RFC 9293 §3.10.7.1).
pub(crate) fn reset(out: &mut Egress, guest: SocketAddr, remote: SocketAddr, t: &Tcp, len: usize) {
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
    out.tcp(remote, guest, &r, &[]);
}

#[cfg(test)]
mod tests {
    use super::Seq;

    #[test]
    fn sequence_numbers_wrap() {
        let a = Seq(u32::MAX - 1);
        let b = a + 5;
        assert_eq!(b, Seq(3));
        assert_eq!(b - a, 5);
        assert!(a.is_before(b) && !b.is_before(a) && !a.is_before(a));
        let mut c = b;
        c += u32::MAX;
        assert_eq!(c, Seq(2));
        assert!(c.is_before(b));
    }
}
