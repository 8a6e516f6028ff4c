//! `announce-self`: RARP frames from each NIC on a schedule, as QEMU 7.2's
//! `net/announce.c` (`qemu_announce_self`, `qemu_announce_timer_step`).
//!
//! - The first round is sent during the command; then round k+1 follows round k after
//!   `initial + (k-1) * step` ms, replaced by `max` when that is negative or above `max`.
//! - Timers are keyed by `id` (absent = ""); a new call with a running id replaces it.
//! - Deliberate difference: QEMU announces forever when `rounds` is negative (its counter
//!   stops only at exactly zero); here `rounds <= 0` sends nothing. Arithmetic saturates, so
//!   huge `step` values cannot overflow.

use std::time::{Duration, Instant};

use crate::frame::MacAddr;

/// The command's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    pub initial: i64,
    pub max: i64,
    pub rounds: i64,
    pub step: i64,
    /// `None`: every NIC; `Some(list)`: only those (an empty list means none).
    pub interfaces: Option<Vec<String>>,
    pub id: String,
}

#[derive(Debug)]
struct Timer {
    params: AnnounceParams,
    /// Rounds already sent.
    sent: i64,
    next: Instant,
}

/// The running announce timers.
#[derive(Debug, Default)]
pub struct Announcer {
    timers: Vec<Timer>,
}

/// The delay before the round after round `k` (1-based), in ms.
pub fn delay_after_round(p: &AnnounceParams, k: i64) -> u64 {
    let d = p.initial.saturating_add((k - 1).saturating_mul(p.step));
    let d = if d < 0 || d > p.max { p.max } else { d };
    d.max(0) as u64
}

/// The send times (ms after the command) of every round, for a finite schedule.
pub fn schedule(p: &AnnounceParams) -> Vec<u64> {
    let mut t = 0u64;
    let mut out = Vec::new();
    for k in 1..=p.rounds.max(0) {
        out.push(t);
        t = t.saturating_add(delay_after_round(p, k));
    }
    out
}

impl Announcer {
    /// Start (or replace) the timer of `params.id`. Returns true if a first round is due now
    /// (the caller sends it before answering the command).
    pub fn start(&mut self, params: AnnounceParams, now: Instant) -> bool {
        self.timers.retain(|t| t.params.id != params.id);
        if params.rounds <= 0 {
            return false;
        }
        let mut t = Timer {
            params,
            sent: 1,
            next: now,
        };
        if t.sent < t.params.rounds {
            t.next = now + Duration::from_millis(delay_after_round(&t.params, 1));
            self.timers.push(t);
        }
        true
    }

    /// The earliest pending round.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.next).min()
    }

    /// The interface selections of every round due at `now`; their timers move on.
    pub fn poll(&mut self, now: Instant) -> Vec<Option<Vec<String>>> {
        let mut due = Vec::new();
        for t in self.timers.iter_mut() {
            if t.next <= now {
                due.push(t.params.interfaces.clone());
                t.sent += 1;
                t.next = now + Duration::from_millis(delay_after_round(&t.params, t.sent));
            }
        }
        self.timers.retain(|t| t.sent < t.params.rounds);
        due
    }
}

/// The 60-byte RARP "reverse request" QEMU sends for a NIC (`announce_self_create`).
pub fn rarp_frame(mac: MacAddr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes());
    f[22..28].copy_from_slice(&mac.0);
    f[32..38].copy_from_slice(&mac.0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(initial: i64, max: i64, rounds: i64, step: i64) -> AnnounceParams {
        AnnounceParams {
            initial,
            max,
            rounds,
            step,
            interfaces: None,
            id: String::new(),
        }
    }

    #[test]
    fn schedule_matches_qemu_example() {
        // qapi/net.json's example (50, 550, 10, 50), worked through QEMU's formula.
        assert_eq!(
            schedule(&p(50, 550, 10, 50)),
            [0, 50, 150, 300, 500, 750, 1050, 1400, 1800, 2250]
        );
        // Migration defaults: 50/550/5/100.
        assert_eq!(schedule(&p(50, 550, 5, 100)), [0, 50, 200, 450, 800]);
        // Delays above max, or negative, become max.
        assert_eq!(schedule(&p(1000, 100, 3, 0)), [0, 100, 200]);
        assert_eq!(schedule(&p(-5, 7, 3, 0)), [0, 7, 14]);
        assert_eq!(schedule(&p(0, 0, 0, 0)), Vec::<u64>::new());
        assert_eq!(schedule(&p(1, i64::MAX, 3, i64::MAX)).len(), 3);
    }

    #[test]
    fn timers_fire_and_replace_by_id() {
        let t0 = Instant::now();
        let mut a = Announcer::default();
        assert!(a.start(p(50, 550, 3, 50), t0));
        assert!(a.poll(t0 + Duration::from_millis(49)).is_empty());
        assert_eq!(a.poll(t0 + Duration::from_millis(50)).len(), 1);
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(a.next_deadline(), Some(t1 + Duration::from_millis(100)));
        assert_eq!(a.poll(t1 + Duration::from_millis(100)).len(), 1);
        assert_eq!(a.next_deadline(), None);
        // Same id replaces; rounds <= 0 sends nothing and cancels.
        assert!(a.start(p(50, 550, 5, 50), t0));
        assert!(!a.start(p(50, 550, -1, 50), t0));
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn rarp_layout() {
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let f = rarp_frame(mac);
        assert_eq!(
            &f[..14],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x80, 0x35]
        );
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac.0);
        assert!(f[38..].iter().all(|&b| b == 0));
    }
}
