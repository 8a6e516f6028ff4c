//! A user-mode network stack for one guest: what QEMU's `-netdev user` (libslirp) gives,
//! built to translate, not terminate: each guest flow maps onto one host socket.
//!
//! State of this crate (see docs/usernet.md):
//! - done (IPv4): ARP for the stack's addresses; ICMP echo to them answered locally and to
//!   other hosts through unprivileged ICMP sockets; a DHCP server ([`dhcp`]: 16 leases by
//!   MAC that no guest can starve); UDP and TCP translated onto host sockets (the gateway
//!   address stands for the host's loopback, the DNS address for the upstream resolver),
//!   with hostfwd/guestfwd driven by the embedder; read-only TFTP ([`tftp`]); `restrict`.
//! - done (IPv6): NDP for the stack's addresses, router advertisements for SLAAC with
//!   RDNSS/DNSSL and a default route, stateless DHCPv6 ([`dhcpv6`]), ICMPv6 echo (answered
//!   for the stack's addresses, through ICMPv6 sockets to others), UDP (and so DNS) and TCP
//!   over IPv6 by the same translation as IPv4, port forwards from and into IPv6.
//! - `smb` is the embedder's: a guest forward to a command, see
//!   [`config::Config::smb_dir`].
//!
//! The protocol logic is sans-IO ([`stack::Stack`]): it takes frames and datagrams and
//! returns frames; host sockets are opened through the [`stack::HostIo`] trait by whoever
//! drives it (netdevd's `user` backend).
#![forbid(unsafe_code)]

pub mod config;
pub mod dhcp;
pub mod dhcpv6;
pub mod stack;
pub mod tcp;
pub mod tftp;

pub use config::Config;
pub use stack::{HostIo, Stack};
