//! TCP translated onto host sockets (the guest connects out): the stack speaks TCP to the
//! guest only as far as needed to move bytes to and from one host socket per connection —
//! the host kernel's TCP does the real work toward the peer (passt's design).
//!
//! What is kept per flow (sequence numbers are `u32` with wrapping arithmetic):
//! - guest → host: `rcv_nxt` (next byte expected from the guest) and `to_host`, bytes the
//!   guest sent and we acknowledged but the host socket has not taken yet (at most
//!   [`RCV_BUF`]; the window we advertise is the room left, capped at 65535 — we do not
//!   scale our own window);
//! - host → guest: `sndbuf`, bytes read from the host socket from `snd_una` on (sent and not
//!   yet acknowledged, then not yet sent; at most [`SND_BUF`], past which the host socket is
//!   not read), `snd_nxt`, and the guest's window (scaled when it offered window scaling).
//!
//! Implemented: the three-way handshake once the host connect succeeds (RST if it fails);
//! data both ways with the guest's MSS and window respected; go-back-N retransmission toward
//! the guest on a timeout doubling from [`RTO_MIN`] to [`RTO_MAX`] (no SACK, no
//! timestamps); FIN and RST both ways; idle flows closed after [`IDLE`].
//! Left out, on purpose: urgent data, SACK, PAWS, congestion control toward the guest (the
//! virtual link does not lose frames except when a queue is full, which retransmission
//! covers), keeping TIME_WAIT (the host socket holds the real connection's state).

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Bytes from the guest buffered for a slow host socket.
pub const RCV_BUF: usize = 256 * 1024;
/// Bytes from the host buffered toward the guest (unacknowledged plus unsent).
pub const SND_BUF: usize = 1024 * 1024;
pub const RTO_MIN: Duration = Duration::from_millis(200);
pub const RTO_MAX: Duration = Duration::from_secs(4);
/// A flow with no traffic for this long is closed.
pub const IDLE: Duration = Duration::from_secs(7200);

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
    pub guest: SocketAddrV4,
    /// The remote end as the guest sees it.
    pub remote: SocketAddrV4,
    pub phase: Phase,
    /// Our initial sequence number (the SYN-ACK's).
    pub isn: u32,
    /// Next sequence number expected from the guest.
    pub rcv_nxt: u32,
    /// Acknowledged guest bytes the host socket has not taken yet.
    pub to_host: Vec<u8>,
    /// The guest's FIN arrived (in sequence).
    pub guest_fin: bool,
    /// The host socket's sending side was shut down after `to_host` drained.
    pub host_shut: bool,
    /// Oldest byte not yet acknowledged by the guest.
    pub snd_una: u32,
    /// Next sequence number to send.
    pub snd_nxt: u32,
    /// Bytes from `snd_una` on.
    pub sndbuf: VecDeque<u8>,
    /// The host closed its side; a FIN follows the data.
    pub host_eof: bool,
    /// Sequence number of our FIN, once sent.
    pub fin_seq: Option<u32>,
    pub fin_acked: bool,
    /// The guest's window in bytes (already scaled).
    pub guest_win: u32,
    pub guest_wscale: Option<u8>,
    pub guest_mss: u16,
    pub rto: Duration,
    pub rto_at: Option<Instant>,
    pub last: Instant,
    /// Whether the host socket is being read (false while `sndbuf` is full).
    pub reading: bool,
    /// SYNs sent (forwarded connections).
    pub syns: u32,
}

impl TcpFlow {
    /// Bytes sent and not acknowledged.
    pub fn in_flight(&self) -> u32 {
        self.snd_nxt
            .wrapping_sub(self.snd_una)
            .saturating_sub(self.fin_seq.is_some() as u32)
    }

    /// The window we advertise.
    pub fn our_window(&self) -> u16 {
        (RCV_BUF - self.to_host.len()).min(65535) as u16
    }

    /// A segment of this flow toward the guest: ports, acknowledgement and window filled in.
    pub fn segment(&self, flags: u8, seq: u32) -> netdevd_wire::packet::Tcp {
        netdevd_wire::packet::Tcp {
            src_port: self.remote.port(),
            dst_port: self.guest.port(),
            seq,
            ack: self.rcv_nxt,
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
