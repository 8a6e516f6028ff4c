//! Stream transports with QEMU's 4-byte length framing: the `socket` netdev's `listen=`,
//! `connect=` and stream `fd=` modes (`net/socket.c`), and QEMU 7.2's `stream` netdev over
//! inet, unix or fd addresses (`net/stream.c`).
//!
//! - Server: one connection at a time (further ones wait in the listen backlog); the link is
//!   down until a peer connects and goes down again when it leaves, then the next peer is
//!   accepted. A peer that sends a bad length, or vanishes mid-frame, is dropped and logged.
//! - Client: a non-blocking connect; the link is up once connected; on EOF the link goes
//!   down and, as in QEMU 7.2, there is no reconnect.
//! - Transmit: frames (header + frame) are appended to a buffer of at most [`TX_LIMIT`]
//!   bytes and written once per loop turn ([`Backend::flush`]), so many small frames cost
//!   one `write`; a full buffer (after trying to write) answers busy until the socket drains.
//!   Receive: 64 KiB reads, frames cut from the buffer, pulled only while the core can take
//!   them. Copies per frame: kernel to read buffer, read buffer to the frame handed to the
//!   core, frame to the peer's transmit buffer, buffer to kernel.
//! - TCP_NODELAY on TCP sockets, as QEMU sets it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use netdevd_core::frame::{Frame, MAX_FRAME};
use netdevd_core::net::{Endpoint, Rx};
use rustix::io::Errno;
use rustix::net::{self as rnet, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::framing::{header, FrameReader};
use crate::{Backend, BackendError, Events, Interest, Ready, Registration};

/// Bytes of frames a stream backend buffers for transmit before it answers busy.
pub const TX_LIMIT: usize = 256 * 1024;

const SUB_LISTENER: u32 = 0;
const SUB_CONN: u32 = 1;

/// Where a stream backend listens or connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAddr {
    Inet(SocketAddr),
    Unix { path: PathBuf, abstract_name: bool },
}

impl std::fmt::Display for StreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamAddr::Inet(a) => write!(f, "tcp:{a}"),
            StreamAddr::Unix {
                path,
                abstract_name: false,
            } => write!(f, "unix:{}", path.display()),
            StreamAddr::Unix {
                path,
                abstract_name: true,
            } => write!(f, "unix:@{}", path.display()),
        }
    }
}

/// How a stream backend starts.
#[derive(Debug)]
pub enum StreamConfig {
    Listen(StreamAddr),
    Connect(StreamAddr),
    /// An fd that is already a connected stream socket.
    Connected(OwnedFd),
    /// An fd that is a listening stream socket (the 7.2 `stream` netdev with `server=on`
    /// and an `fd` address).
    Listening(OwnedFd),
}

/// The backend.
pub struct StreamBackend {
    reg: Registration,
    listener: Option<OwnedFd>,
    /// Unix socket file this backend created (removed on close).
    owned_path: Option<PathBuf>,
    /// Where the listener is reachable, for users.
    listen_addr: Option<String>,
    conn: Option<OwnedFd>,
    connecting: bool,
    rx: FrameReader,
    /// Frames (with headers) not yet written; `tx[tx_pos..]` is what is left.
    tx: Vec<u8>,
    tx_pos: usize,
    /// Answered busy since the buffer last drained: say so when it does.
    tx_busy: bool,
    paused: bool,
    interest: Interest,
    events: Events,
    info: String,
    /// Whether this backend accepts again after a peer leaves.
    server: bool,
}

fn sock_err(what: &str, e: Errno) -> BackendError {
    BackendError::io(what.to_string(), io::Error::from(e))
}

fn unix_addr(path: &std::path::Path, abstract_name: bool) -> Result<SocketAddrUnix, BackendError> {
    let r = if abstract_name {
        SocketAddrUnix::new_abstract_name(path.as_os_str().as_encoded_bytes())
    } else {
        SocketAddrUnix::new(path)
    };
    r.map_err(|_| BackendError::Msg(format!("UNIX socket path '{}' is too long", path.display())))
}

fn new_socket(family: AddressFamily) -> Result<OwnedFd, BackendError> {
    rnet::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| sock_err("can't create stream socket", e))
}

fn listen_on(addr: &StreamAddr) -> Result<(OwnedFd, Option<PathBuf>), BackendError> {
    match addr {
        StreamAddr::Inet(a) => {
            let fd = new_socket(if a.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            })?;
            rnet::sockopt::set_socket_reuseaddr(&fd, true)
                .map_err(|e| sock_err("can't set socket option SO_REUSEADDR", e))?;
            rnet::bind(&fd, a)
                .map_err(|e| sock_err(&format!("can't bind ip={} to socket", a.ip()), e))?;
            rnet::listen(&fd, 1).map_err(|e| sock_err("can't listen on socket", e))?;
            Ok((fd, None))
        }
        StreamAddr::Unix {
            path,
            abstract_name,
        } => {
            let ua = unix_addr(path, *abstract_name)?;
            if !*abstract_name {
                // QEMU unlinks a stale socket file before binding.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            let fd = new_socket(AddressFamily::UNIX)?;
            rnet::bind(&fd, &ua).map_err(|e| {
                sock_err(&format!("can't bind unix={} to socket", path.display()), e)
            })?;
            rnet::listen(&fd, 1).map_err(|e| sock_err("can't listen on socket", e))?;
            Ok((fd, (!*abstract_name).then(|| path.clone())))
        }
    }
}

/// Start a non-blocking connect. Returns the socket and whether the connect is still in
/// progress.
fn connect_to(addr: &StreamAddr) -> Result<(OwnedFd, bool), BackendError> {
    let (fd, r) = match addr {
        StreamAddr::Inet(a) => {
            let fd = new_socket(if a.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            })?;
            let r = rnet::connect(&fd, a);
            (fd, r)
        }
        StreamAddr::Unix {
            path,
            abstract_name,
        } => {
            let ua = unix_addr(path, *abstract_name)?;
            let fd = new_socket(AddressFamily::UNIX)?;
            let r = rnet::connect(&fd, &ua);
            (fd, r)
        }
    };
    match r {
        Ok(()) => Ok((fd, false)),
        Err(Errno::INPROGRESS) | Err(Errno::AGAIN) => Ok((fd, true)),
        Err(e) => Err(sock_err("can't connect socket", e)),
    }
}

fn set_nodelay(fd: &OwnedFd) {
    // Not a TCP socket (unix): the option does not apply.
    let _ = rnet::sockopt::set_tcp_nodelay(fd, true);
}

impl StreamBackend {
    pub fn new(reg: Registration, config: StreamConfig) -> Result<Self, BackendError> {
        let mut b = StreamBackend {
            reg,
            listener: None,
            owned_path: None,
            listen_addr: None,
            conn: None,
            connecting: false,
            rx: FrameReader::new(),
            tx: Vec::new(),
            tx_pos: 0,
            tx_busy: false,
            paused: false,
            interest: Interest::NONE,
            events: Events::default(),
            info: String::new(),
            server: false,
        };
        match config {
            StreamConfig::Listen(addr) => {
                let (fd, path) = listen_on(&addr)?;
                let reach = match rnet::getsockname(&fd)
                    .ok()
                    .and_then(|a| SocketAddr::try_from(a).ok())
                {
                    Some(local) => format!("tcp:{local}"),
                    None => addr.to_string(),
                };
                b.info = format!("listening on {reach}");
                b.listen_addr = Some(reach);
                b.set_listener(fd, path)?;
            }
            StreamConfig::Listening(fd) => {
                netdevd_sys::set_nonblocking(fd.as_fd(), true)
                    .map_err(|e| BackendError::io("can't use fd", e))?;
                b.info = "listening on fd".into();
                b.set_listener(fd, None)?;
            }
            StreamConfig::Connect(addr) => {
                let (fd, in_progress) = connect_to(&addr)?;
                b.info = format!("connect to {addr}");
                b.connecting = in_progress;
                b.attach(fd, !in_progress)?;
            }
            StreamConfig::Connected(fd) => {
                netdevd_sys::set_nonblocking(fd.as_fd(), true)
                    .map_err(|e| BackendError::io("can't use fd", e))?;
                b.info = "connected fd".into();
                b.attach(fd, true)?;
            }
        }
        Ok(b)
    }

    /// The local address a listening backend is bound to (for `port=0`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let fd = self.listener.as_ref()?;
        rnet::getsockname(fd)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok())
    }

    /// Whether a peer is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some() && !self.connecting
    }

    fn set_listener(&mut self, fd: OwnedFd, path: Option<PathBuf>) -> Result<(), BackendError> {
        self.reg
            .add(fd.as_fd(), SUB_LISTENER, Interest::READ)
            .map_err(|e| BackendError::io("can't watch listening socket", e))?;
        self.listener = Some(fd);
        self.owned_path = path;
        self.server = true;
        Ok(())
    }

    fn attach(&mut self, fd: OwnedFd, up: bool) -> Result<(), BackendError> {
        set_nodelay(&fd);
        let interest = self.wanted();
        self.reg
            .add(fd.as_fd(), SUB_CONN, interest)
            .map_err(|e| BackendError::io("can't watch socket", e))?;
        self.interest = interest;
        self.conn = Some(fd);
        if up {
            self.events.link = Some(true);
        }
        Ok(())
    }

    fn wanted(&self) -> Interest {
        Interest::level(
            !self.paused && !self.connecting,
            !self.tx.is_empty() || self.connecting,
        )
    }

    fn update_interest(&mut self) {
        let want = self.wanted();
        if want != self.interest {
            if let Some(c) = &self.conn {
                if self.reg.modify(c.as_fd(), SUB_CONN, want).is_ok() {
                    self.interest = want;
                }
            }
        }
    }

    fn set_listening(&mut self, on: bool) {
        if let Some(l) = &self.listener {
            let _ = self.reg.modify(
                l.as_fd(),
                SUB_LISTENER,
                if on { Interest::READ } else { Interest::NONE },
            );
        }
    }

    /// Drop the connection: link down; a server accepts again.
    fn disconnect(&mut self, why: &str) {
        if let Some(c) = self.conn.take() {
            tracing::info!(backend = %self.info, "stream peer gone: {why}");
            self.reg.remove(c.as_fd());
        }
        self.connecting = false;
        self.rx.reset();
        self.tx.clear();
        self.tx_pos = 0;
        self.tx_busy = false;
        self.interest = Interest::NONE;
        self.events.link = Some(false);
        // Frames the core queued for us can now be dropped by it (our link is down).
        self.events.drained = true;
        if self.server {
            self.set_listening(true);
        }
    }

    fn accept(&mut self) {
        let Some(l) = &self.listener else { return };
        match rnet::accept_with(l, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => {
                self.set_listening(false);
                self.rx.reset();
                self.tx.clear();
                self.tx_pos = 0;
                if let Err(e) = self.attach(fd, true) {
                    tracing::warn!(backend = %self.info, "cannot serve accepted peer: {e}");
                    self.set_listening(true);
                } else {
                    tracing::info!(backend = %self.info, "stream peer connected");
                }
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            Err(e) => tracing::warn!(backend = %self.info, "accept failed: {e}"),
        }
    }

    /// Write as much of the buffer as the socket takes.
    fn write_tx(&mut self) {
        let Some(c) = &self.conn else { return };
        while self.tx_pos < self.tx.len() {
            match rustix::io::write(c, &self.tx[self.tx_pos..]) {
                Ok(n) => self.tx_pos += n,
                Err(Errno::AGAIN) | Err(Errno::INTR) => break,
                Err(e) => {
                    self.disconnect(&format!("write failed: {e}"));
                    return;
                }
            }
        }
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
            if std::mem::take(&mut self.tx_busy) {
                self.events.drained = true;
            }
        }
        self.update_interest();
    }

    fn finish_connect(&mut self) {
        let Some(c) = &self.conn else { return };
        match rnet::sockopt::socket_error(c) {
            Ok(Ok(())) => {
                self.connecting = false;
                self.events.link = Some(true);
                tracing::info!(backend = %self.info, "connected");
                self.update_interest();
            }
            Ok(Err(e)) => self.disconnect(&format!("can't connect socket: {e}")),
            Err(e) => self.disconnect(&format!("can't connect socket: {e}")),
        }
    }
}

impl Endpoint for StreamBackend {
    fn receive(&mut self, frame: &Frame) -> Rx {
        if self.conn.is_none() || self.connecting {
            return Rx::Dropped;
        }
        if frame.data.is_empty() || frame.data.len() > MAX_FRAME {
            return Rx::Dropped;
        }
        if self.tx.len() - self.tx_pos >= TX_LIMIT {
            self.write_tx();
            if self.tx.len() - self.tx_pos >= TX_LIMIT {
                self.tx_busy = true;
                return Rx::Busy;
            }
        }
        self.tx.extend_from_slice(&header(frame.data.len()));
        self.tx.extend_from_slice(&frame.data);
        Rx::Taken
    }

    fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            self.reg.remove(c.as_fd());
        }
        if let Some(l) = self.listener.take() {
            self.reg.remove(l.as_fd());
        }
        if let Some(p) = self.owned_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Backend for StreamBackend {
    fn ready(&mut self, sub: u32, r: Ready) {
        match sub {
            SUB_LISTENER => self.accept(),
            SUB_CONN => {
                if self.connecting {
                    if r.writable || r.closed {
                        self.finish_connect();
                    }
                    return;
                }
                if r.writable {
                    self.write_tx();
                }
                // Reading (and seeing EOF) happens in poll_frame.
            }
            _ => {}
        }
    }

    fn poll_frame(&mut self, out: &mut Frame) -> bool {
        loop {
            match self.rx.next_frame_into(&mut out.data) {
                Ok(true) => {
                    out.offload = None;
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(backend = %self.info, "dropping stream: {e}");
                    self.disconnect("bad frame length");
                    return false;
                }
            }
            if self.paused || self.connecting {
                return false;
            }
            let Some(c) = self.conn.as_ref() else {
                return false;
            };
            match self.rx.fill(|buf| rustix::io::read(c, buf)) {
                Ok(0) => {
                    let partial = self.rx.buffered() > 0;
                    self.disconnect(if partial {
                        "closed mid-frame"
                    } else {
                        "closed"
                    });
                    return false;
                }
                Ok(_) => {}
                Err(Errno::AGAIN) | Err(Errno::INTR) => return false,
                Err(e) => {
                    self.disconnect(&format!("read failed: {e}"));
                    return false;
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.tx_pos < self.tx.len() && !self.interest.write {
            self.write_tx();
        }
    }

    fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    fn set_paused(&mut self, paused: bool) {
        if self.paused != paused {
            self.paused = paused;
            self.update_interest();
        }
    }

    fn info(&self) -> String {
        self.info.clone()
    }

    fn listen_addr(&self) -> Option<String> {
        self.listen_addr.clone()
    }
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::rc::Rc;

    fn reg() -> Registration {
        Registration::new(Rc::new(crate::Reactor::new().unwrap()), 0)
    }

    fn pull(b: &mut StreamBackend, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut f = Frame::new(Vec::new());
        for _ in 0..200 {
            while b.poll_frame(&mut f) {
                got.push(f.data.clone());
            }
            if got.len() >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn listen_accepts_frames_both_ways_and_reaccepts() {
        let mut b = StreamBackend::new(
            reg(),
            StreamConfig::Listen(StreamAddr::Inet("127.0.0.1:0".parse().unwrap())),
        )
        .unwrap();
        let addr = b.local_addr().unwrap();
        for round in 0..2u8 {
            let mut peer = std::net::TcpStream::connect(addr).unwrap();
            b.ready(
                SUB_LISTENER,
                Ready {
                    token: 0,
                    readable: true,
                    writable: false,
                    closed: false,
                },
            );
            assert_eq!(b.take_events().link, Some(true));
            let mut bytes = header(60).to_vec();
            bytes.extend_from_slice(&[round; 60]);
            bytes.extend_from_slice(&header(3));
            peer.write_all(&bytes).unwrap();
            peer.write_all(&[7, 8, 9]).unwrap();
            assert_eq!(pull(&mut b, 2), vec![vec![round; 60], vec![7, 8, 9]]);
            assert_eq!(b.receive(&Frame::new(vec![5; 70])), Rx::Taken);
            b.flush();
            let mut got = [0u8; 74];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got[..4], &[0, 0, 0, 70]);
            drop(peer);
            assert!(pull(&mut b, 1).is_empty());
            assert_eq!(b.take_events().link, Some(false));
        }
    }

    #[test]
    fn bad_length_drops_the_peer() {
        let mut b = StreamBackend::new(
            reg(),
            StreamConfig::Listen(StreamAddr::Inet("127.0.0.1:0".parse().unwrap())),
        )
        .unwrap();
        let mut peer = std::net::TcpStream::connect(b.local_addr().unwrap()).unwrap();
        b.ready(
            SUB_LISTENER,
            Ready {
                token: 0,
                readable: true,
                writable: false,
                closed: false,
            },
        );
        peer.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
        assert!(pull(&mut b, 1).is_empty());
        let ev = b.take_events();
        assert_eq!(ev.link, Some(false));
        let mut buf = [0u8; 1];
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        assert_eq!(
            peer.read(&mut buf).unwrap_or(0),
            0,
            "the peer was disconnected"
        );
    }

    #[test]
    fn full_socket_answers_busy_then_drains() {
        let (a, c) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(reg(), StreamConfig::Connected(OwnedFd::from(a))).unwrap();
        b.take_events();
        let frame = Frame::new(vec![1; 60_000]);
        let mut taken = 0;
        let mut saw_busy = false;
        for _ in 0..200 {
            match b.receive(&frame) {
                Rx::Taken => taken += 1,
                Rx::Busy => {
                    saw_busy = true;
                    break;
                }
                Rx::Dropped => panic!("dropped"),
            }
        }
        assert!(saw_busy && taken > 0);
        // The reader drains; the backend finishes its partial frame and says so.
        let mut reader = c;
        reader.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0usize;
        for _ in 0..100 {
            while let Ok(n) = reader.read(&mut sink) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            b.ready(
                SUB_CONN,
                Ready {
                    token: 0,
                    readable: false,
                    writable: true,
                    closed: false,
                },
            );
            if b.take_events().drained {
                break;
            }
        }
        while let Ok(n) = reader.read(&mut sink) {
            total += n;
        }
        assert_eq!(total, taken * 60_004, "every taken frame arrives whole");
        assert_eq!(b.receive(&frame), Rx::Taken);
    }

    #[test]
    fn unix_listen_and_connect() {
        let dir = std::env::temp_dir().join(format!("netdevd-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let addr = StreamAddr::Unix {
            path: path.clone(),
            abstract_name: false,
        };
        let mut server = StreamBackend::new(reg(), StreamConfig::Listen(addr.clone())).unwrap();
        let mut client = StreamBackend::new(reg(), StreamConfig::Connect(addr)).unwrap();
        server.ready(
            SUB_LISTENER,
            Ready {
                token: 0,
                readable: true,
                writable: false,
                closed: false,
            },
        );
        assert!(server.is_connected() && client.is_connected());
        assert_eq!(client.receive(&Frame::new(vec![4; 100])), Rx::Taken);
        client.flush();
        assert_eq!(pull(&mut server, 1), vec![vec![4; 100]]);
        server.close();
        assert!(!path.exists(), "the socket file is removed");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn connect_to_a_closed_port_goes_nowhere() {
        // Find a free port, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = StreamBackend::new(
            reg(),
            StreamConfig::Connect(StreamAddr::Inet(SocketAddr::from(([127, 0, 0, 1], port)))),
        );
        match r {
            Err(e) => assert!(e.to_string().contains("can't connect socket"), "{e}"),
            Ok(mut b) => {
                b.ready(
                    SUB_CONN,
                    Ready {
                        token: 0,
                        readable: false,
                        writable: true,
                        closed: true,
                    },
                );
                assert_eq!(b.take_events().link, Some(false));
                assert!(!b.is_connected());
            }
        }
    }
}
