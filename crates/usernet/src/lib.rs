//! A user-mode network stack for one guest: what QEMU's `-netdev user` (libslirp) gives,
//! built to translate, not terminate: each guest flow maps onto one host socket.
//!
//! State of this crate (see docs/usernet.md):
//! - done: ARP for the gateway and DNS addresses; ICMP echo to them answered locally; a DHCP
//!   server (DISCOVER/OFFER/REQUEST/ACK/NAK/RELEASE/INFORM, 16 leases by MAC, options 1, 3,
//!   6, 12, 15, 26, 51, 54, 66, 67, 119); UDP translated onto host sockets (the gateway
//!   address stands for the host's loopback, the DNS address for the upstream resolver),
//!   idle flows expire, at most [`stack::MAX_UDP_FLOWS`] flows; `restrict` (no UDP out
//!   but DHCP, no router or DNS offered).
//! - not yet: TCP translation, hostfwd/guestfwd, TFTP, ICMP to other hosts, IPv6.
//!
//! The protocol logic is sans-IO ([`stack::Stack`]): it takes frames and datagrams and
//! returns frames; host sockets are opened through the [`stack::HostIo`] trait by whoever
//! drives it (netdevd's `user` backend).
#![forbid(unsafe_code)]

pub mod config;
pub mod dhcp;
pub mod stack;
pub mod tcp;
pub mod tftp;

pub use config::Config;
pub use stack::{HostIo, Stack};
