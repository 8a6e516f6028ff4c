//! The `user` netdev's driver: a [`netdevd_usernet::Stack`] (all protocol logic, sans-IO)
//! plus the host sockets it asks for, registered on the reactor with the flow id as `sub`.
//!
//! Frames from the guest (the core's `receive`) are processed at once; frames for the guest
//! wait in the stack's bounded queue until the core pulls them with `poll_frame`. Datagrams
//! on host sockets are read when their socket is readable, at most
//! [`READS_PER_WAKEUP`] per socket per turn.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::Instant;

use rustix::io::Errno;
use rustix::net::{self as rnet, AddressFamily, SocketFlags, SocketType};

use netdevd_core::frame::Frame;
use netdevd_core::net::{Endpoint, Rx};
use netdevd_usernet::stack::{FlowId, FIRST_DRIVER_ID};
use netdevd_usernet::{Config, HostIo, Stack};

use crate::{Backend, Events, Interest, Ready, Registration};

/// Frames toward the guest up to this size are copied into the loop's frame buffer rather
/// than swapped with it (see [`UserBackend::poll_frame`]).
const SMALL_FRAME: usize = 2048;

/// Datagrams read from one host socket per loop turn.
pub const READS_PER_WAKEUP: usize = 64;

/// A host socket of one flow.
enum Sock {
    Udp(UdpSocket),
    ///
    /// Registered once, edge-triggered for reading and writing: no `epoll_ctl` per state
    /// change (a connect's end, a full send buffer, peeked bytes left in place).
    Tcp {
        fd: OwnedFd,
        connecting: bool,
        /// Whether `SO_PEEK_OFF` works on it (see [`HostIo::tcp_peek`]); `None` until a
        /// peek past the first byte is first needed.
        peek_off: Option<bool>,
        /// The socket's peek offset as the kernel keeps it (a peek moves it forward by what
        /// it returned, consuming moves it back), so that it is set only when it differs;
        /// `None` while it is off (a peek reads from the oldest byte).
        peek_pos: Option<usize>,
    },
    /// A flow through a UDP forward: replies go out of forward `fwd`'s socket to `peer`.
    UdpFwd {
        fwd: usize,
        peer: SocketAddr,
    },
}

impl Sock {
    /// The flow's own fd (a forwarded UDP flow shares its forward's).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Sock::Udp(s) => Some(s.as_fd()),
            Sock::Tcp { fd, .. } => Some(fd.as_fd()),
            Sock::UdpFwd { .. } => None,
        }
    }
}

/// How TCP sockets are watched: see [`Sock::Tcp`].
const TCP_INTEREST: Interest = Interest::BOTH.edge();

/// `NETDEVD_NO_PEEK_OFF=1` makes netdevd peek as on kernels without TCP `SO_PEEK_OFF`
/// (before 6.9), to exercise that way in tests.
fn peek_offsets_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("NETDEVD_NO_PEEK_OFF").is_some_and(|v| v == "1"))
}

/// What is known about `SO_PEEK_OFF` on a new socket.
fn initial_peek_off() -> Option<bool> {
    peek_offsets_disabled().then_some(false)
}

/// The host socket of a `hostfwd` rule: listening (TCP) or bound (UDP).
struct Forward {
    listener: OwnedFd,
    /// As the rule says it (`[::]`: resolved per connection, `Stack::forward_guest`).
    guest: SocketAddr,
    udp: bool,
}

/// The backend.
pub struct UserBackend {
    reg: Registration,
    stack: Stack,
    socks: HashMap<FlowId, Sock>,
    /// Sockets of the forwards; sub `FIRST_DRIVER_ID + index`.
    forwards: Vec<Forward>,
    /// Commands started for `guestfwd` connections.
    children: Vec<std::process::Child>,
    events: Events,
    buf: Vec<u8>,
    /// See [`Host::scratch`].
    scratch: Vec<u8>,
    info: String,
}

/// The host side the stack sees.
struct Host<'a> {
    reg: &'a Registration,
    socks: &'a mut HashMap<FlowId, Sock>,
    forwards: &'a [Forward],
    /// Commands started for `guestfwd` connections, reaped as they exit.
    children: &'a mut Vec<std::process::Child>,
    /// Where bytes that are not wanted go: on kernels without TCP `SO_PEEK_OFF`, the
    /// already-sent bytes a peek from the start returns.
    scratch: &'a mut Vec<u8>,
}

impl Host<'_> {
    fn tcp_fd(&self, id: FlowId) -> io::Result<&OwnedFd> {
        match self.socks.get(&id) {
            Some(Sock::Tcp { fd, .. }) => Ok(fd),
            _ => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl HostIo for Host<'_> {
    fn udp_open(&mut self, id: FlowId, target: SocketAddr) -> io::Result<()> {
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(target)?;
        s.set_nonblocking(true)?;
        self.reg.add(s.as_fd(), id, Interest::READ)?;
        self.socks.insert(id, Sock::Udp(s));
        Ok(())
    }

    fn icmp_open(&mut self, id: FlowId, target: std::net::IpAddr) -> io::Result<()> {
        let (family, proto) = if target.is_ipv4() {
            (AddressFamily::INET, rnet::ipproto::ICMP)
        } else {
            (AddressFamily::INET6, rnet::ipproto::ICMPV6)
        };
        let fd = rnet::socket_with(
            family,
            SocketType::DGRAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(proto),
        )?;
        rnet::connect(&fd, &SocketAddr::from((target, 0)))?;
        self.reg.add(fd.as_fd(), id, Interest::READ)?;
        // A datagram socket like the UDP ones: send and recv carry whole ICMP messages.
        self.socks.insert(id, Sock::Udp(UdpSocket::from(fd)));
        Ok(())
    }

    fn udp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<()> {
        match self.socks.get(&id) {
            Some(Sock::Udp(s)) => s.send(data).map(|_| ()),
            Some(Sock::UdpFwd { fwd, peer }) => {
                let f = self.forwards.get(*fwd).ok_or(io::ErrorKind::NotConnected)?;
                rnet::sendto(&f.listener, data, rnet::SendFlags::NOSIGNAL, peer)?;
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    fn udp_close(&mut self, id: FlowId) {
        if let Some(fd) = self.socks.remove(&id).as_ref().and_then(Sock::fd) {
            self.reg.remove(fd);
        }
    }

    fn tcp_connect(&mut self, id: FlowId, target: SocketAddr) -> io::Result<bool> {
        let family = if target.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let fd = rnet::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        let connected = match rnet::connect(&fd, &target) {
            Ok(()) => true,
            // To a loopback address the handshake is usually over before connect returns:
            // then the guest gets its SYN-ACK now instead of after another loop turn.
            Err(Errno::INPROGRESS) => rnet::getpeername(&fd).is_ok_and(|a| a.is_some()),
            Err(e) => return Err(e.into()),
        };
        let _ = rnet::sockopt::set_tcp_nodelay(&fd, true);
        self.reg.add(fd.as_fd(), id, TCP_INTEREST)?;
        self.socks.insert(
            id,
            Sock::Tcp {
                peek_off: initial_peek_off(),
                peek_pos: None,
                fd,
                connecting: !connected,
            },
        );
        Ok(connected)
    }

    fn tcp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<usize> {
        match rustix::io::write(self.tcp_fd(id)?, data) {
            Ok(n) => Ok(n),
            Err(Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn tcp_peek(
        &mut self,
        id: FlowId,
        skip: usize,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        let Some(Sock::Tcp {
            fd,
            peek_off,
            peek_pos,
            ..
        }) = self.socks.get_mut(&id)
        else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let flags = rnet::RecvFlags::PEEK | rnet::RecvFlags::DONTWAIT;
        if *peek_pos != Some(skip) && !(skip == 0 && peek_pos.is_none()) && *peek_off != Some(false)
        {
            // The first peek past the oldest byte tells whether the kernel has offsets.
            match netdevd_sys::set_peek_off(fd.as_fd(), skip) {
                Ok(()) => {
                    *peek_off = Some(true);
                    *peek_pos = Some(skip);
                }
                Err(_) if peek_off.is_none() => *peek_off = Some(false),
                Err(e) => return Err(e),
            }
        }
        let start = buf.len();
        let r = if *peek_off != Some(false) {
            // Into the spare capacity, never zeroed; at most `max` is kept.
            buf.reserve_exact(max);
            let r = rnet::recv(&*fd, rustix::buffer::spare_capacity(buf), flags).map(|(n, _)| n);
            if let (Ok(n), Some(pos)) = (r, peek_pos.as_mut()) {
                *pos = skip + n;
            }
            r
        } else {
            // From the start: the first `skip` bytes (sent already) land in the scratch.
            if self.scratch.len() < skip {
                self.scratch.resize(skip, 0);
            }
            buf.resize(start + max, 0);
            let mut iov = [
                io::IoSliceMut::new(&mut self.scratch[..skip]),
                io::IoSliceMut::new(&mut buf[start..]),
            ];
            let mut control = rnet::RecvAncillaryBuffer::default();
            let r = match rnet::recvmsg(&*fd, &mut iov, &mut control, flags) {
                // Nothing past what was sent: only once all is acknowledged (skip 0) can
                // a zero read mean end of stream.
                Ok(m) if m.bytes <= skip && skip > 0 => Err(Errno::AGAIN),
                Ok(m) => Ok(m.bytes.saturating_sub(skip)),
                Err(e) => Err(e),
            };
            buf.truncate(start + *r.as_ref().unwrap_or(&0));
            r
        };
        match r {
            Ok(n) => {
                buf.truncate(start + n.min(max));
                Ok(n.min(max))
            }
            Err(Errno::AGAIN) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e.into()),
        }
    }

    fn tcp_consume(&mut self, id: FlowId, mut n: usize) {
        let Some(Sock::Tcp { fd, peek_pos, .. }) = self.socks.get_mut(&id) else {
            return;
        };
        while n > 0 {
            let r = netdevd_sys::tcp_discard(fd.as_fd(), n);
            match r {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    n -= k.min(n);
                    if let Some(pos) = peek_pos.as_mut() {
                        *pos = pos.saturating_sub(k);
                    }
                }
            }
        }
    }

    fn tcp_shutdown(&mut self, id: FlowId) {
        if let Ok(fd) = self.tcp_fd(id) {
            let _ = rnet::shutdown(fd, rnet::Shutdown::Write);
        }
    }

    fn tcp_close(&mut self, id: FlowId, abort: bool) {
        if let Some(fd) = self.socks.remove(&id).as_ref().and_then(Sock::fd) {
            if abort {
                // Close with RST, as the guest reset its side.
                let _ = rnet::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
            }
            // No epoll_ctl: the socket is ours alone, and closing it (now, as it drops)
            // takes it out of epoll; an event already fetched for it finds no flow.
        }
    }

    fn tcp_command(&mut self, id: FlowId, argv: &[String]) -> io::Result<()> {
        let program = argv.first().ok_or(io::ErrorKind::InvalidInput)?;
        // The connection reaches the command over a TCP connection on the loopback, as
        // libslirp does it: programs written for inetd (smbd among them) ask their stdin
        // for its peer's address and give up on anything but an Internet socket.
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let mine = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (theirs, from) = listener.accept()?;
        if from != mine.local_addr()? {
            // Someone else's connection came first: refuse rather than hand it a command.
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        drop(listener);
        let theirs = OwnedFd::from(theirs);
        let theirs_out = theirs.try_clone()?;
        // In a process group of its own (libslirp's children get a session of their own):
        // smbd, run this way, ends by signalling its whole process group.
        let child = std::process::Command::new(program)
            .args(&argv[1..])
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::from(theirs_out))
            .process_group(0)
            .spawn()?;
        self.children.push(child);
        let mine = OwnedFd::from(mine);
        netdevd_sys::set_nonblocking(mine.as_fd(), true)?;
        // Connected from the start: the writable event reports it like a finished connect.
        self.reg.add(mine.as_fd(), id, TCP_INTEREST)?;
        self.socks.insert(
            id,
            Sock::Tcp {
                peek_off: initial_peek_off(),
                peek_pos: None,
                fd: mine,
                connecting: true,
            },
        );
        Ok(())
    }
}

impl UserBackend {
    /// The stack and the host side it works on, borrowed apart.
    fn split(&mut self) -> (&mut Stack, Host<'_>) {
        (
            &mut self.stack,
            Host {
                reg: &self.reg,
                socks: &mut self.socks,
                forwards: &self.forwards,
                children: &mut self.children,
                scratch: &mut self.scratch,
            },
        )
    }

    /// The backend, with its forwarded host ports listening.
    pub fn new(reg: Registration, cfg: Config) -> Result<Self, crate::BackendError> {
        let info = format!(
            "net={}/{},host={},dns={}",
            cfg.net, cfg.prefix, cfg.host, cfg.dns
        );
        let mut forwards = Vec::new();
        for (i, f) in cfg.hostfwd.iter().enumerate() {
            let fail = || {
                crate::BackendError::Msg(format!(
                    "Could not set up host forwarding rule '{}'",
                    f.rule
                ))
            };
            let ty = if f.udp {
                SocketType::DGRAM
            } else {
                SocketType::STREAM
            };
            let family = if f.host.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            };
            let l = rnet::socket_with(
                family,
                ty,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )
            .map_err(|_| fail())?;
            // `[::]` is IPv6 only: an IPv4 rule on the same port is a rule of its own.
            if f.host.is_ipv6() {
                rnet::sockopt::set_ipv6_v6only(&l, true).map_err(|_| fail())?;
            }
            // Two rules on one port must clash (as in QEMU), so no SO_REUSEADDR for UDP.
            if !f.udp {
                rnet::sockopt::set_socket_reuseaddr(&l, true).map_err(|_| fail())?;
            }
            rnet::bind(&l, &f.host).map_err(|_| fail())?;
            if !f.udp {
                rnet::listen(&l, 64).map_err(|_| fail())?;
            }
            reg.add(l.as_fd(), FIRST_DRIVER_ID + i as u32, Interest::READ)
                .map_err(|_| fail())?;
            forwards.push(Forward {
                listener: l,
                guest: f.guest,
                udp: f.udp,
            });
        }
        // The SMB server's private directory, last: nothing after it can fail, and from
        // here on `close` removes it.
        if let Some((dir, conf)) = &cfg.smb_dir {
            let fail = |e: io::Error| {
                crate::BackendError::Msg(format!("Could not create samba server dir: {e}"))
            };
            std::fs::create_dir(dir).map_err(fail)?;
            if let Err(e) = std::fs::write(dir.join("smb.conf"), conf) {
                let _ = std::fs::remove_dir_all(dir);
                return Err(fail(e));
            }
        }
        Ok(UserBackend {
            reg,
            stack: {
                let mut s = Stack::new(cfg);
                s.set_offload(true);
                s
            },
            socks: HashMap::new(),
            forwards,
            children: Vec::new(),
            events: Events {
                link: Some(true),
                drained: false,
            },
            buf: vec![0u8; 65536],
            scratch: Vec::new(),
            info,
        })
    }

    /// Datagrams on a forwarded UDP port: each client is a flow into the guest.
    fn forward_datagrams(&mut self, idx: usize) {
        let now = Instant::now();
        for _ in 0..READS_PER_WAKEUP {
            let Some(fw) = self.forwards.get(idx) else {
                return;
            };
            let (n, peer) =
                match rnet::recvfrom(&fw.listener, &mut self.buf[..], rnet::RecvFlags::DONTWAIT) {
                    Ok((n, _, Some(a))) => match SocketAddr::try_from(a) {
                        Ok(peer) => (n, peer),
                        Err(_) => continue,
                    },
                    Ok(_) => continue,
                    Err(_) => return,
                };
            let Some(guest) = self.stack.forward_guest(fw.guest) else {
                continue;
            };
            if let Some((id, true)) =
                self.stack
                    .udp_inbound(guest, peer.port(), &self.buf[..n], now)
            {
                self.socks.insert(id, Sock::UdpFwd { fwd: idx, peer });
            }
        }
    }

    /// A forwarded port has connections waiting: each becomes a flow into the guest.
    fn accept(&mut self, idx: usize) {
        let now = Instant::now();
        for _ in 0..64 {
            let Some(fw) = self.forwards.get(idx) else {
                return;
            };
            let fd = match rnet::acceptfrom_with(
                &fw.listener,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok((fd, addr)) => (fd, addr),
                Err(_) => return,
            };
            let (fd, addr) = fd;
            let port = addr
                .and_then(|a| SocketAddr::try_from(a).ok())
                .map(|a| a.port())
                .unwrap_or(0);
            // Into an IPv6 guest not heard from yet, or past the flow limit: the
            // connection is closed (the socket drops here).
            let Some(guest) = self.stack.forward_guest(fw.guest) else {
                continue;
            };
            let Some(id) = self.stack.tcp_inbound(guest, port, now) else {
                continue;
            };
            let _ = rnet::sockopt::set_tcp_nodelay(&fd, true);
            if self.reg.add(fd.as_fd(), id, TCP_INTEREST).is_ok() {
                self.socks.insert(
                    id,
                    Sock::Tcp {
                        peek_off: initial_peek_off(),
                        peek_pos: None,
                        fd,
                        connecting: false,
                    },
                );
            }
        }
    }
}

impl Endpoint for UserBackend {
    fn receive(&mut self, frame: &Frame) -> Rx {
        let (stack, mut host) = self.split();
        match &frame.offload {
            Some(hdr) if hdr.needs_work() => {
                stack.from_guest_offloaded(&frame.data, hdr, Instant::now(), &mut host)
            }
            _ => stack.from_guest(&frame.data, Instant::now(), &mut host),
        }
        Rx::Taken
    }

    /// Offloaded frames are taken as they are: a TCP segment of 64 KiB goes to the host
    /// socket in one write, and partial checksums need no finishing.
    fn accepts_offloads(&self) -> bool {
        true
    }

    fn close(&mut self) {
        for (_, s) in self.socks.drain() {
            if let Some(fd) = s.fd() {
                self.reg.remove(fd);
            }
        }
        for f in self.forwards.drain(..) {
            self.reg.remove(f.listener.as_fd());
        }
        // Commands of guest forwards (and smbd) still running are ended: we started them.
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((d, _)) = &self.stack.config().smb_dir {
            if let Err(e) = std::fs::remove_dir_all(d) {
                tracing::warn!(
                    "could not remove the SMB server's directory {}: {e}",
                    d.display()
                );
            }
        }
    }
}

impl Backend for UserBackend {
    fn drops(&self) -> Vec<(&'static str, u64)> {
        self.stack
            .stats()
            .drops_by_reason()
            .map(|(r, n)| (r.name(), n))
            .collect()
    }

    fn ready(&mut self, sub: u32, r: Ready) {
        // Reap guestfwd commands that have exited.
        self.children
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if sub >= FIRST_DRIVER_ID {
            let idx = (sub - FIRST_DRIVER_ID) as usize;
            return match self.forwards.get(idx) {
                Some(f) if f.udp => self.forward_datagrams(idx),
                Some(_) => self.accept(idx),
                None => {}
            };
        }
        let now = Instant::now();
        match self.socks.get_mut(&sub) {
            Some(Sock::Udp(_)) => {
                if !(r.readable || r.closed) {
                    return;
                }
                for _ in 0..READS_PER_WAKEUP {
                    let Some(Sock::Udp(s)) = self.socks.get(&sub) else {
                        return;
                    };
                    match s.recv(&mut self.buf) {
                        Ok(n) => self.stack.from_host(sub, &self.buf[..n], now),
                        // ICMP errors (port unreachable) surface on connected sockets.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                        Err(_) => return,
                    }
                }
            }
            Some(Sock::Tcp { fd, connecting, .. }) => {
                if *connecting {
                    if !(r.writable || r.closed) {
                        return;
                    }
                    let ok = matches!(rnet::sockopt::socket_error(&*fd), Ok(Ok(())));
                    *connecting = false;
                    let (stack, mut host) = self.split();
                    stack.tcp_connected(sub, ok, now, &mut host);
                    return;
                }
                let (stack, mut host) = self.split();
                if r.writable {
                    stack.tcp_writable(sub, now, &mut host);
                }
                if r.readable || r.closed {
                    stack.tcp_readable(sub, r.closed, now, &mut host);
                }
            }
            // Forwarded UDP flows have no socket of their own.
            Some(Sock::UdpFwd { .. }) | None => {}
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.stack.next_deadline()
    }

    fn has_pending(&self) -> bool {
        self.stack.has_frames() || self.stack.has_blocked()
    }

    fn timers(&mut self, now: Instant) {
        let (stack, mut host) = self.split();
        stack.timers(now, &mut host);
    }

    fn poll_frame(&mut self, out: &mut Frame) -> bool {
        if !self.stack.has_frames() && self.stack.has_blocked() {
            let (stack, mut host) = self.split();
            stack.resume(Instant::now(), &mut host);
        }
        match self.stack.pop_frame_offload() {
            Some((f, hdr)) => {
                if f.len() <= SMALL_FRAME {
                    // Copied: the buffer keeps its size for the next frame read from a tap.
                    out.data.clear();
                    out.data.extend_from_slice(&f);
                } else {
                    // Swapped: the buffer it replaces builds a later big frame.
                    let old = std::mem::replace(&mut out.data, f);
                    self.stack.recycle(old);
                }
                out.offload = hdr;
                true
            }
            None => false,
        }
    }

    fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    fn set_paused(&mut self, _paused: bool) {
        // Frames for the guest wait in the stack's bounded queue; host sockets keep being
        // read (what the guest cannot take in time is dropped, as a lossy link would).
    }

    fn info(&self) -> String {
        self.info.clone()
    }
}

impl Drop for UserBackend {
    fn drop(&mut self) {
        self.close();
    }
}
