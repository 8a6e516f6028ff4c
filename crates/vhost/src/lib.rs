//! The virtio-net device netdevd serves to VMMs over vhost-user (a NIC): the protocol's
//! messages ([`msg`]), guest memory shared by the front-end ([`memory`]), and the device
//! itself with its queues ([`device`]); [`driver`] is the other side of the rings, a guest
//! driver's, for tests, fuzzing and benchmarks. Sans-IO: whoever drives the device
//! (netdevd's vhost-user NIC driver, `netdevd_backends::vhost_user_nic`) owns the socket and
//! watches the eventfds.
//!
//! Why not rust-vmm's `vhost-user-backend`: it runs a thread per queue and its own epoll,
//! where netdevd serves every client from one reactor thread; and `vhost`'s request handler
//! reads its socket blocking, without SEND_RARP or NET_SET_MTU. The message layer here is
//! small and fuzzed; the rings are `virtio-queue`'s and the memory `vm-memory`'s (their
//! checked accessors are what keeps guest memory untrusted).

pub mod device;
pub mod driver;
pub mod memory;
pub mod msg;

pub use device::{NetDevice, RxPush};
