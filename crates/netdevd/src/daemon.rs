//! The event loop: QMP listeners and connections, signals and timers on one epoll.
//!
//! Tokens are laid out by [`crate::tokens`] (listeners, connections, the signal fd,
//! backends). Connections live in a slot table; a slot is
//! reused only after its fd was deregistered and closed.
//!
//! Limits, so that no client can exhaust the daemon: at most [`MAX_CONNECTIONS`] QMP
//! connections (more are accepted and closed at once), and a connection whose unread replies
//! exceed [`MAX_OUTPUT`] is no longer read until it drains (QEMU likewise stops reading
//! while a reply is pending).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use netdevd_qapi::schema::CommandDef;
use netdevd_qapi::COMMANDS;
use netdevd_qmp::{event_line, greeting, QmpError, Session};
use netdevd_reactor::{Interest, Reactor, Ready};

use crate::cli::QmpAddr;
use crate::fds::Monitor;
use crate::state::State;
use crate::tokens;

/// QMP connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Reply bytes a connection may leave unread before it stops being read.
pub const MAX_OUTPUT: usize = 1 << 20;

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

struct Conn {
    stream: Stream,
    session: Session,
    monitor: Monitor,
    out: Vec<u8>,
    interest: Interest,
    /// Close once `out` is written (after `quit`, or on EOF with replies pending).
    closing: bool,
}

/// The daemon: its state plus everything the loop owns.
pub struct Daemon {
    pub state: State,
    reactor: Rc<Reactor>,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    signals: Option<OwnedFd>,
    running: bool,
}

/// Bind a QMP address. A unix socket path that exists as a socket is replaced (QEMU
/// unlinks it too); its directory is created if missing.
fn bind(addr: &QmpAddr) -> io::Result<Listener> {
    match addr {
        QmpAddr::Unix(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
            let l = UnixListener::bind(path)?;
            l.set_nonblocking(true)?;
            Ok(Listener::Unix(l, path.clone()))
        }
        QmpAddr::Tcp(host, port) => {
            let addrs: Vec<_> = (host.as_str(), *port).to_socket_addrs()?.collect();
            let l = TcpListener::bind(&addrs[..])?;
            l.set_nonblocking(true)?;
            Ok(Listener::Tcp(l))
        }
    }
}

impl Daemon {
    pub fn new(state: State) -> io::Result<Self> {
        Ok(Daemon {
            reactor: state.reg.reactor.clone(),
            state,
            listeners: Vec::new(),
            conns: Vec::new(),
            signals: None,
            running: true,
        })
    }

    /// Listen for QMP on `addr`. Returns the bound address (for `tcp:...:0`).
    pub fn listen(&mut self, addr: &QmpAddr) -> io::Result<QmpAddr> {
        let l = bind(addr)?;
        let bound = match &l {
            Listener::Tcp(t) => {
                let a = t.local_addr()?;
                QmpAddr::Tcp(a.ip().to_string(), a.port())
            }
            Listener::Unix(_, p) => QmpAddr::Unix(p.clone()),
        };
        self.reactor.register(
            l.fd(),
            tokens::LISTENER | self.listeners.len() as u64,
            Interest::READ,
        )?;
        self.listeners.push(l);
        Ok(bound)
    }

    /// Stop on SIGINT, SIGTERM or SIGHUP.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let fd = netdevd_sys::termination_signalfd()?;
        self.reactor
            .register(fd.as_fd(), tokens::SIGNAL, Interest::READ)?;
        self.signals = Some(fd);
        Ok(())
    }

    /// Run until `quit` or a signal.
    pub fn run(&mut self) -> io::Result<()> {
        let mut ready = Vec::new();
        let mut more = self.state.reg.pump_all();
        while self.running {
            ready.clear();
            // Frames still waiting in a backend: look again without sleeping.
            let deadline = if more {
                Some(Instant::now())
            } else {
                self.state.next_deadline()
            };
            self.reactor.wait(deadline, &mut ready)?;
            for r in &ready {
                self.dispatch(*r);
            }
            // Timers first: what they produce (retransmissions, announce frames) moves in the
            // pump right after.
            self.state.run_timers(Instant::now());
            more = self.state.reg.pump_all();
            self.flush_events();
            if self.state.quit && self.conns.iter().flatten().all(|c| c.out.is_empty()) {
                self.running = false;
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, r: Ready) {
        let (kind, idx) = tokens::split(r.token);
        match kind {
            tokens::LISTENER => self.accept(idx),
            tokens::CONN => self.conn_ready(idx, r),
            tokens::BACKEND => self.state.reg.backend_ready(r.token, r),
            tokens::SIGNAL => {
                if let Some(sig) = self
                    .signals
                    .as_ref()
                    .and_then(|s| netdevd_sys::read_signal(s.as_fd()))
                {
                    tracing::info!(signal = sig, "stopping on signal");
                    self.running = false;
                }
            }
            _ => {}
        }
    }

    fn accept(&mut self, idx: usize) {
        loop {
            let stream = match &self.listeners[idx] {
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            let live = self.conns.iter().filter(|c| c.is_some()).count();
            if live >= MAX_CONNECTIONS {
                tracing::warn!("too many QMP connections; refusing one");
                continue;
            }
            if let Err(e) = self.add_conn(stream) {
                tracing::warn!(error = %e, "cannot serve a QMP connection");
            }
        }
    }

    fn add_conn(&mut self, stream: Stream) -> io::Result<()> {
        match &stream {
            Stream::Unix(s) => s.set_nonblocking(true)?,
            Stream::Tcp(s) => s.set_nonblocking(true)?,
        }
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.reactor
            .register(stream.fd(), tokens::CONN | slot as u64, Interest::READ)?;
        let mut conn = Conn {
            stream,
            session: Session::new(COMMANDS),
            monitor: Monitor::default(),
            out: greeting(&self.state.info).into_bytes(),
            interest: Interest::READ,
            closing: false,
        };
        Self::write_out(&mut conn);
        self.conns[slot] = Some(conn);
        self.update_interest(slot);
        Ok(())
    }

    fn conn_ready(&mut self, idx: usize, r: Ready) {
        if r.writable {
            if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
                Self::write_out(c);
            }
        }
        if r.readable || r.closed {
            self.read_conn(idx);
        }
        self.update_interest(idx);
    }

    fn read_conn(&mut self, idx: usize) {
        // On the stack: a 64 KiB buffer zeroed for every read cost more than the read,
        // and a client with more to say is read again next turn.
        let mut buf = [0u8; 16 * 1024];
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if conn.closing || conn.out.len() > MAX_OUTPUT {
            return;
        }
        let got = match &mut conn.stream {
            Stream::Unix(s) => netdevd_sys::recv_with_fds(s.as_fd(), &mut buf).map(|(n, fds)| {
                if !fds.is_empty() {
                    // A new batch replaces (and closes) an unclaimed earlier one, as in QEMU.
                    conn.monitor.pending = fds;
                }
                n
            }),
            Stream::Tcp(s) => s.read(&mut buf),
        };
        match got {
            Ok(0) => {
                conn.closing = true;
                conn.out.clear();
            }
            Ok(n) => {
                let state = &mut self.state;
                let monitor = &mut conn.monitor;
                let now = Instant::now();
                let mut handler =
                    |cmd: &'static CommandDef, args| -> Result<serde_json::Value, QmpError> {
                        state.execute(cmd, args, monitor, now)
                    };
                let mut out = String::new();
                conn.session.feed(&buf[..n], &mut handler, &mut out);
                conn.out.extend_from_slice(out.as_bytes());
                if self.state.quit {
                    conn.session.close();
                    conn.closing = true;
                }
                Self::write_out(conn);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                conn.closing = true;
                conn.out.clear();
            }
        }
    }

    fn write_out(conn: &mut Conn) {
        while !conn.out.is_empty() {
            let r = match &mut conn.stream {
                Stream::Unix(s) => s.write(&conn.out),
                Stream::Tcp(s) => s.write(&conn.out),
            };
            match r {
                Ok(0) => break,
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    break
                }
                Err(_) => {
                    conn.out.clear();
                    conn.closing = true;
                }
            }
        }
    }

    /// Re-register a connection for what it now needs; close it when it is done.
    fn update_interest(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if conn.closing && conn.out.is_empty() {
            let _ = self.reactor.deregister(conn.stream.fd());
            self.conns[idx] = None;
            return;
        }
        let want = Interest::level(
            !conn.closing && conn.out.len() <= MAX_OUTPUT,
            !conn.out.is_empty(),
        );
        if want != conn.interest
            && self
                .reactor
                .modify(conn.stream.fd(), tokens::CONN | idx as u64, want)
                .is_ok()
        {
            conn.interest = want;
        }
    }

    /// Send queued events to every negotiated session.
    fn flush_events(&mut self) {
        if self.state.events.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let lines: Vec<String> = self
            .state
            .events
            .drain(..)
            .map(|(n, d)| event_line(&n, d, now))
            .collect();
        for idx in 0..self.conns.len() {
            if let Some(c) = self.conns[idx].as_mut() {
                if c.session.wants_events() && c.out.len() <= MAX_OUTPUT {
                    for l in &lines {
                        c.out.extend_from_slice(l.as_bytes());
                    }
                    Self::write_out(c);
                }
            }
            self.update_interest(idx);
        }
    }

    /// Remove unix socket files this daemon created.
    pub fn cleanup(&mut self) {
        for l in &self.listeners {
            if let Listener::Unix(_, p) = l {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
