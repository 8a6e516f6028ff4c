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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

/// One translated connection.
#[derive(Debug)]
pub struct TcpFlow {
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
    pub fn segment(&self, flags: u8, seq: Seq) -> netdevd_wire::packet::Tcp {
        netdevd_wire::packet::Tcp {
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
