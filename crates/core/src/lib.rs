//! The net client model of netdevd, as QEMU 7.2 has it (`net/net.c`, `net/hub.c`,
//! `net/queue.c`, `net/announce.c`, virtio-net's rx filter): clients with ids, peers, hubs
//! and hub ports, bounded queues with backpressure, link state, NIC receive filters and
//! the announce schedule.
//!
//! Pure logic: no fds, no clock of its own (callers pass `now`). Backends plug in through
//! [`net::Endpoint`]. See `docs/core.md` for the theory of operation.
#![forbid(unsafe_code)]

pub mod announce;
pub mod frame;
pub mod net;
pub mod nic;

/// QEMU's id rule for netdevs and devices: an ASCII letter, then letters, digits, `-`,
/// `.`, `_` (`id_wellformed()`).
pub fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_follow_qemu_rules() {
        for ok in ["a", "h0", "net.0", "a-b_c.d", &"x".repeat(200)] {
            assert!(super::id_wellformed(ok), "{ok}");
        }
        for bad in ["", "9h", "a/b", "a b", "_a", "-a", "é"] {
            assert!(!super::id_wellformed(bad), "{bad}");
        }
    }
}
