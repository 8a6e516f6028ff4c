//! The event loop's wait: level-triggered epoll over fds registered with a 64-bit token,
//! and a deadline for the caller's earliest timer. One thread, no async runtime: a handler
//! runs to completion, then the next readiness is looked at (QEMU's main loop and passt work
//! the same way).
//!
//! Level-triggered on purpose: a client that stops reading because its peer is busy simply
//! drops read interest and is woken again by the kernel, with nothing to re-arm by hand.
//! A registration can ask for edge triggering ([`Interest::edge`]) where data is left in a
//! socket on purpose (the user netdev peeks TCP data and consumes it only once the guest
//! acknowledges it: level triggering would wake the loop for those bytes forever).
//! The epoll fd itself is pollable ([`Reactor::as_fd`]), so an embedder can nest this loop
//! in its own.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::Timespec;

/// What a registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
    /// Edge-triggered: woken when readiness arises, not while it lasts.
    pub edge: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        read: true,
        write: false,
        edge: false,
    };
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
        edge: false,
    };
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
        edge: false,
    };
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
        edge: false,
    };

    /// Read and/or write interest, level-triggered.
    pub const fn level(read: bool, write: bool) -> Interest {
        Interest {
            read,
            write,
            edge: false,
        }
    }

    /// The same interest, edge-triggered.
    pub const fn edge(self) -> Interest {
        Interest { edge: true, ..self }
    }

    fn flags(self) -> EventFlags {
        let mut f = EventFlags::RDHUP;
        if self.edge {
            f |= EventFlags::ET;
        }
        if self.read {
            f |= EventFlags::IN;
        }
        if self.write {
            f |= EventFlags::OUT;
        }
        f
    }
}

/// One fd's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up: the handler should read (to see EOF or the error) and close.
    pub closed: bool,
}

/// The epoll instance.
///
/// Every method takes `&self`, so the reactor can be shared (`Rc<Reactor>`) by the loop and
/// the backends that register their own fds.
pub struct Reactor {
    epoll: OwnedFd,
    events: RefCell<Vec<Event>>,
    /// Waits so far: see [`Reactor::turn`].
    turns: Cell<u64>,
}

/// Events taken from the kernel per wait.
const EVENTS_PER_WAIT: usize = 256;

impl Reactor {
    pub fn new() -> io::Result<Self> {
        Ok(Reactor {
            epoll: epoll::create(CreateFlags::CLOEXEC)?,
            events: RefCell::new(Vec::with_capacity(EVENTS_PER_WAIT)),
            turns: Cell::new(0),
        })
    }

    pub fn register(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        Ok(epoll::add(
            &self.epoll,
            fd,
            EventData::new_u64(token),
            interest.flags(),
        )?)
    }

    pub fn modify(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        Ok(epoll::modify(
            &self.epoll,
            fd,
            EventData::new_u64(token),
            interest.flags(),
        )?)
    }

    pub fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.epoll, fd)?)
    }

    /// How many waits have begun: the loop turn the events of the last wait belong to. A
    /// level-triggered fd reported in two turns in a row had more to read than one pass
    /// took.
    pub fn turn(&self) -> u64 {
        self.turns.get()
    }

    /// Wait until an fd is ready or `deadline` passes (`None`: no deadline). Ready fds are
    /// appended to `out`. EINTR is an empty wait.
    pub fn wait(&self, deadline: Option<Instant>, out: &mut Vec<Ready>) -> io::Result<()> {
        self.turns.set(self.turns.get() + 1);
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            // epoll_wait counts whole milliseconds: add one so a timer never fires early.
            let left = if left.is_zero() {
                left
            } else {
                left + Duration::from_millis(1)
            };
            Timespec {
                tv_sec: left.as_secs().min(i32::MAX as u64 / 1000) as i64,
                tv_nsec: left.subsec_nanos() as i64,
            }
        });
        let mut events = self.events.borrow_mut();
        events.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut *events),
            timeout.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for ev in events.iter() {
            let flags = ev.flags;
            out.push(Ready {
                token: ev.data.u64(),
                readable: flags.intersects(EventFlags::IN | EventFlags::PRI),
                writable: flags.contains(EventFlags::OUT),
                closed: flags.intersects(EventFlags::ERR | EventFlags::HUP | EventFlags::RDHUP),
            });
        }
        Ok(())
    }
}

impl AsFd for Reactor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_readiness_and_deadline() {
        let r = Reactor::new().unwrap();
        let (rd, wr) = rustix::pipe::pipe().unwrap();
        r.register(rd.as_fd(), 7, Interest::READ).unwrap();
        let mut out = Vec::new();
        let t0 = Instant::now();
        r.wait(Some(t0 + Duration::from_millis(20)), &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(20));
        rustix::io::write(&wr, b"x").unwrap();
        r.wait(None, &mut out).unwrap();
        assert_eq!(out[0].token, 7);
        assert!(out[0].readable);
        // Level-triggered: still readable until drained; no interest, no event.
        r.modify(rd.as_fd(), 7, Interest::NONE).unwrap();
        out.clear();
        r.wait(Some(Instant::now()), &mut out).unwrap();
        assert!(out.is_empty());
        drop(wr);
        r.modify(rd.as_fd(), 7, Interest::READ).unwrap();
        r.wait(None, &mut out).unwrap();
        assert!(out[0].readable);
        r.deregister(rd.as_fd()).unwrap();
    }
}
