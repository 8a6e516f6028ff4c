//! Host-side netdev drivers, and the transport of NICs (`vhost_user_nic`: a VMM's virtio-net
//! device over vhost-user). Each backend is a client of the core (it implements
//! [`netdevd_core::net::Endpoint`], the receive side) plus the fds it owns, which it
//! registers itself on the shared [`Reactor`] under the token range it was given.
//!
//! The loop drives a backend through [`Backend`]: readiness goes to [`Backend::ready`];
//! frames from the host side are pulled one at a time with [`Backend::poll_frame`] only while
//! the core can take them (that is the backpressure: an unread socket is the only queue);
//! frames the core delivers may be buffered by `receive` and written by [`Backend::flush`]
//! once per loop turn (one syscall for many frames); link changes and "my transmit buffer
//! drained" come back through [`Backend::take_events`].
//!
//! Backends know nothing of QMP or QAPI: the daemon maps options onto the plain configs here.
#![forbid(unsafe_code)]

pub mod addr;
pub mod dgram;
pub mod framing;
pub mod stream;
pub mod tap;
pub mod user;
pub mod vhost_user_nic;

use std::cell::RefCell;
use std::io;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use netdevd_core::frame::Frame;
use netdevd_core::net::{Endpoint, Rx};
pub use netdevd_reactor::{Interest, Reactor, Ready};

/// A backend's place on the reactor: token = `base | sub`, `sub` (32 bits) naming one of
/// its fds.
#[derive(Clone)]
pub struct Registration {
    reactor: Rc<Reactor>,
    base: u64,
}

impl Registration {
    pub fn new(reactor: Rc<Reactor>, base: u64) -> Self {
        Registration { reactor, base }
    }

    pub fn add(&self, fd: BorrowedFd<'_>, sub: u32, interest: Interest) -> io::Result<()> {
        self.reactor.register(fd, self.base | sub as u64, interest)
    }

    pub fn modify(&self, fd: BorrowedFd<'_>, sub: u32, interest: Interest) -> io::Result<()> {
        self.reactor.modify(fd, self.base | sub as u64, interest)
    }

    /// The reactor's loop turn (see [`netdevd_reactor::Reactor::turn`]).
    pub fn turn(&self) -> u64 {
        self.reactor.turn()
    }

    pub fn remove(&self, fd: BorrowedFd<'_>) {
        // An fd that is about to be closed leaves epoll anyway; an error here changes nothing.
        let _ = self.reactor.deregister(fd);
    }
}

/// What a backend reports to the loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// The backend's own link changed (a connection came or went).
    pub link: Option<bool>,
    /// A transmit that answered busy has drained: the core may deliver queued frames again.
    pub drained: bool,
}

/// A host-side driver.
pub trait Backend: Endpoint {
    /// One of the backend's fds is ready.
    fn ready(&mut self, sub: u32, r: Ready);
    /// The next frame from the host side, reading as needed, written into `out` (whose
    /// buffer is reused from call to call); false when nothing is ready.
    fn poll_frame(&mut self, out: &mut Frame) -> bool;
    /// Write out what `receive` buffered. Called once per loop turn after frames moved;
    /// a backend that writes at once has nothing to do.
    fn flush(&mut self) {}
    /// Link changes and drained transmits since the last call.
    fn take_events(&mut self) -> Events;
    /// Stop (or resume) reading from the host side.
    fn set_paused(&mut self, paused: bool);
    /// QEMU's `info network` string for this client.
    fn info(&self) -> String;
    /// Frames for the core are waiting inside the backend (not in a socket the reactor
    /// watches), so the loop must pull again even without a readiness event.
    fn has_pending(&self) -> bool {
        false
    }
    /// When the backend next needs [`Backend::timers`] (retransmissions, expiry).
    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }
    /// Run what is due at `now`.
    fn timers(&mut self, _now: std::time::Instant) {}
    /// Where a listening backend can be reached (`tcp:HOST:PORT` or `unix:PATH`).
    fn listen_addr(&self) -> Option<String> {
        None
    }
    /// Frames the backend dropped, by reason (for `x-query-netdev-stats`): only reasons
    /// that occurred.
    fn drops(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A backend shared between the core (as its endpoint) and the loop (which polls it).
/// The loop never holds a borrow while it calls into the core, so the core's calls into
/// the endpoint never find it borrowed.
pub type SharedBackend = Rc<RefCell<dyn Backend>>;

/// The core's handle on a [`SharedBackend`].
pub struct BackendEndpoint(pub SharedBackend);

impl Endpoint for BackendEndpoint {
    fn receive(&mut self, frame: &Frame) -> Rx {
        match self.0.try_borrow_mut() {
            Ok(mut b) => b.receive(frame),
            // Only reachable if a frame loops back into a backend while it is being polled;
            // the loop is written so that it cannot, but a dropped frame beats a panic.
            Err(_) => Rx::Dropped,
        }
    }
    fn link_changed(&mut self, up: bool) {
        if let Ok(mut b) = self.0.try_borrow_mut() {
            b.link_changed(up);
        }
    }
    fn resume(&mut self) {
        if let Ok(mut b) = self.0.try_borrow_mut() {
            b.resume();
        }
    }
    fn close(&mut self) {
        if let Ok(mut b) = self.0.try_borrow_mut() {
            b.close();
        }
    }
    fn accepts_offloads(&self) -> bool {
        self.0.try_borrow().is_ok_and(|b| b.accepts_offloads())
    }
}

/// Errors creating a backend; `Display` is QEMU's text where QEMU has one.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Msg(String),
    /// `what: strerror`, as QEMU's `error_setg_errno` writes it.
    #[error("{what}: {}", strerror(source))]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The C library's text for an error, without Rust's " (os error N)".
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl BackendError {
    pub fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        BackendError::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Run a network script (`script IFNAME`) and wait for it, as QEMU's `launch_script`:
/// executed directly (no shell), non-zero ends with QEMU's text, which quotes the raw wait
/// status (exit code 1 shows as 256); a script that cannot be started counts as exit 1.
pub fn run_script(script: &std::path::Path, ifname: &str) -> Result<(), BackendError> {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(script)
        .arg(ifname)
        .stdin(std::process::Stdio::null())
        .status()
        .map(|s| s.into_raw())
        .unwrap_or(256);
    if status != 0 {
        return Err(BackendError::Msg(format!(
            "network script {} failed with status {status}",
            script.display()
        )));
    }
    Ok(())
}
