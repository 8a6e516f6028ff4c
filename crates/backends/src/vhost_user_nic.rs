//! A NIC served over vhost-user: netdevd listens on a unix socket (server mode) or connects
//! to a VMM that listens (client mode, retried every [`RECONNECT`] until it is there and
//! after it goes), and the VMM (QEMU's `-netdev vhost-user`, DPDK's virtio_user) drives the virtio-net
//! device of `netdevd_vhost`; the guest's transmit queue is this client's source of frames,
//! its receive queue where the core delivers. One front-end at a time: a second connection
//! is closed at once. When the front-end goes away the device forgets everything (memory
//! unmapped, eventfds closed) and the link goes down until the next one has set the rings up.
//!
//! Fds on the reactor: sub 0 the listening socket, 1 the connection, 2 + q the kick eventfd
//! of queue q. Call eventfds are written once per loop turn ([`Backend::flush`]) for the
//! queues whose buffers were used and whose guest wants to hear of it.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use netdevd_core::frame::Frame;
use netdevd_core::net::{Endpoint, Rx};
use netdevd_reactor::{Interest, Ready};
use netdevd_vhost::msg::{self, Header, HEADER_LEN};
use netdevd_vhost::{NetDevice, RxPush};

use crate::{Backend, BackendError, Events, Registration};

const SUB_LISTEN: u32 = 0;
const SUB_CONN: u32 = 1;
const SUB_KICK: u32 = 2;

/// Where the NIC's vhost-user socket is.
#[derive(Debug, Clone)]
pub struct NicConfig {
    /// The socket: netdevd listens there (created; removed when the NIC goes), or with
    /// `server: false` connects there.
    pub path: PathBuf,
    pub server: bool,
}

/// How often a client-mode NIC tries to reach its VMM.
pub const RECONNECT: std::time::Duration = std::time::Duration::from_secs(1);

struct Conn {
    stream: UnixStream,
    /// The message being read: exactly its bytes are read (the header, then the payload),
    /// so that the fds a read brings are this message's (the kernel hands a message's fds
    /// to the read that reaches its bytes, and a read may end with them).
    inbuf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// The NIC's host side.
pub struct VhostUserNic {
    reg: Registration,
    /// Server mode's listening socket; `None` in client mode.
    listener: Option<UnixListener>,
    path: PathBuf,
    /// Client mode: when to try to connect next (none while connected).
    retry_at: Option<std::time::Instant>,
    conn: Option<Conn>,
    dev: NetDevice,
    events: Events,
    link: bool,
    paused: bool,
    /// A frame was refused for want of receive buffers: the core waits for a kick.
    rx_blocked: bool,
    /// Frames of netdevd's own to send from the NIC before the guest's (the RARPs a
    /// `SEND_RARP` asks for).
    own: std::collections::VecDeque<Vec<u8>>,
    /// Messages that could not be parsed (the connection was closed for each).
    pub bad_messages: u64,
    /// Frames toward the guest longer than the MTU the VMM set.
    pub over_mtu: u64,
}

impl VhostUserNic {
    pub fn new(reg: Registration, cfg: NicConfig) -> Result<Self, BackendError> {
        if !cfg.server {
            let mut nic = Self::with(reg, None, cfg.path);
            nic.retry_at = Some(std::time::Instant::now());
            nic.connect();
            return Ok(nic);
        }
        // A socket file left by an earlier netdevd (killed, not stopped) is replaced, as
        // QEMU's server sockets do: a VMM waiting to reconnect finds the new one.
        if std::fs::symlink_metadata(&cfg.path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(&cfg.path);
        }
        let listener = UnixListener::bind(&cfg.path).map_err(|e| BackendError::Io {
            what: format!("Failed to bind socket to {}", cfg.path.display()),
            source: e,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| BackendError::Msg(e.to_string()))?;
        if let Err(e) = reg.add(listener.as_fd(), SUB_LISTEN, Interest::READ) {
            let _ = std::fs::remove_file(&cfg.path);
            return Err(BackendError::Msg(e.to_string()));
        }
        Ok(Self::with(reg, Some(listener), cfg.path))
    }

    fn with(reg: Registration, listener: Option<UnixListener>, path: PathBuf) -> Self {
        VhostUserNic {
            reg,
            listener,
            path,
            retry_at: None,
            conn: None,
            dev: NetDevice::new(),
            events: Events {
                link: Some(false),
                drained: false,
            },
            link: false,
            paused: false,
            rx_blocked: false,
            own: std::collections::VecDeque::new(),
            bad_messages: 0,
            over_mtu: 0,
        }
    }

    /// Client mode: try to reach the VMM now; on failure try again in [`RECONNECT`].
    fn connect(&mut self) {
        if self.conn.is_some() {
            return;
        }
        match UnixStream::connect(&self.path) {
            Ok(s)
                if s.set_nonblocking(true).is_ok()
                    && self.reg.add(s.as_fd(), SUB_CONN, Interest::READ).is_ok() =>
            {
                tracing::info!(
                    "vhost-user {}: connected to the front-end",
                    self.path.display()
                );
                self.retry_at = None;
                self.conn = Some(Conn {
                    stream: s,
                    inbuf: Vec::new(),
                    fds: Vec::new(),
                });
            }
            _ => self.retry_at = Some(std::time::Instant::now() + RECONNECT),
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(Ok((s, _))) = self.listener.as_ref().map(|l| l.accept()) else {
                return;
            };
            // The current front-end may have hung up in the same loop turn: hear that first
            // (a VMM that reconnects at once must not find its old connection in the way).
            if self.conn.is_some() {
                self.read_conn();
            }
            if self.conn.is_some() {
                tracing::warn!(
                    "vhost-user {}: a second front-end refused",
                    self.path.display()
                );
                continue;
            }
            if s.set_nonblocking(true).is_err()
                || self.reg.add(s.as_fd(), SUB_CONN, Interest::READ).is_err()
            {
                continue;
            }
            tracing::info!("vhost-user {}: front-end connected", self.path.display());
            self.conn = Some(Conn {
                stream: s,
                inbuf: Vec::new(),
                fds: Vec::new(),
            });
        }
    }

    fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            self.reg.remove(c.stream.as_fd());
            tracing::info!("vhost-user {}: front-end gone", self.path.display());
            if self.listener.is_none() {
                self.retry_at = Some(std::time::Instant::now() + RECONNECT);
            }
        }
        for q in 0..netdevd_vhost::device::QUEUES {
            if let Some(fd) = self.dev.kick_fd(q) {
                self.reg.remove(fd);
            }
        }
        self.dev.reset();
        self.rx_blocked = false;
        self.update_link();
    }

    fn update_link(&mut self) {
        let up = self.dev.link_up();
        if up != self.link {
            self.link = up;
            self.events.link = Some(up);
        }
    }

    /// Read what the connection has and handle every whole message.
    fn read_conn(&mut self) {
        let mut buf = [0u8; msg::MAX_PAYLOAD];
        loop {
            let Some(c) = self.conn.as_mut() else { return };
            // How much of the current message is still to come.
            let want = if c.inbuf.len() < HEADER_LEN {
                HEADER_LEN - c.inbuf.len()
            } else {
                match Header::parse(&c.inbuf) {
                    Ok(h) => HEADER_LEN + h.size as usize - c.inbuf.len(),
                    Err(e) => {
                        tracing::warn!("vhost-user {}: {e}", self.path.display());
                        self.bad_messages += 1;
                        return self.disconnect();
                    }
                }
            };
            if want > 0 {
                match netdevd_sys::recv_with_fds(c.stream.as_fd(), &mut buf[..want]) {
                    Ok((0, _)) => return self.disconnect(),
                    Ok((n, fds)) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        c.fds.extend(fds);
                        if c.fds.len() > msg::MAX_FDS {
                            self.bad_messages += 1;
                            return self.disconnect();
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.disconnect(),
                }
            }
            // A whole message (a header with no payload lands here too).
            let Ok(h) = Header::parse(&c.inbuf) else {
                return self.disconnect();
            };
            let payload = std::mem::take(&mut c.inbuf);
            let fds = std::mem::take(&mut c.fds);
            let req = match msg::parse(&h, &payload[HEADER_LEN..], fds) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        request = h.request,
                        "vhost-user {}: {e}",
                        self.path.display()
                    );
                    self.bad_messages += 1;
                    return self.disconnect();
                }
            };
            tracing::debug!(request = h.request, "vhost-user message");
            let mtu = self.dev.mtu();
            let out = self.dev.handle(&h, req);
            if let Some(m) = self.dev.mtu().filter(|m| Some(*m) != mtu) {
                tracing::info!("vhost-user {}: MTU {m} (from the VMM)", self.path.display());
            }
            if let Some(q) = out.kick_changed {
                if let Some(fd) = self.dev.kick_fd(q) {
                    let _ = self.reg.add(fd, SUB_KICK + q as u32, Interest::READ);
                }
            }
            if let Some(mac) = out.rarp {
                // After a migration the VMM asks the back-end to announce the guest: the
                // same frame announce-self sends, from the NIC onto its peer.
                let f = netdevd_core::announce::rarp_frame(netdevd_core::frame::MacAddr(mac));
                self.own.push_back(f.to_vec());
            }
            if let Some(reply) = out.reply {
                let Some(c) = self.conn.as_mut() else { return };
                if c.stream.write_all(&reply).is_err() {
                    return self.disconnect();
                }
            }
        }
        self.update_link();
    }

    fn kick(&mut self, q: usize) {
        if let Some(fd) = self.dev.kick_fd(q) {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(fd, &mut b);
        }
        self.dev.kicked(q);
        if q.is_multiple_of(2) && self.rx_blocked {
            self.rx_blocked = false;
            self.events.drained = true;
        }
        self.update_link();
    }
}

fn signal(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

impl Endpoint for VhostUserNic {
    fn receive(&mut self, frame: &Frame) -> Rx {
        match self.dev.rx_push(&frame.data, frame.offload) {
            RxPush::Taken => Rx::Taken,
            RxPush::NoBuffers => {
                self.rx_blocked = true;
                Rx::Busy
            }
            RxPush::Dropped => Rx::Dropped,
            RxPush::OverMtu => {
                self.over_mtu += 1;
                Rx::Dropped
            }
        }
    }

    fn close(&mut self) {
        self.disconnect();
        self.retry_at = None;
        if let Some(l) = self.listener.take() {
            self.reg.remove(l.as_fd());
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn accepts_offloads(&self) -> bool {
        self.dev.guest_offloads()
    }
}

impl Backend for VhostUserNic {
    fn ready(&mut self, sub: u32, _r: Ready) {
        match sub {
            SUB_LISTEN => self.accept(),
            SUB_CONN => self.read_conn(),
            s if s >= SUB_KICK => self.kick((s - SUB_KICK) as usize),
            _ => {}
        }
    }

    fn poll_frame(&mut self, out: &mut Frame) -> bool {
        if self.paused {
            return false;
        }
        if let Some(f) = self.own.pop_front() {
            out.data.clear();
            out.data.extend_from_slice(&f);
            out.offload = None;
            return true;
        }
        match self.dev.tx_pop(&mut out.data) {
            Some(offload) => {
                out.offload = offload;
                true
            }
            None => false,
        }
    }

    fn flush(&mut self) {
        for fd in self.dev.notify() {
            signal(fd);
        }
    }

    fn take_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    fn has_pending(&self) -> bool {
        !self.paused && (!self.own.is_empty() || self.dev.tx_waiting())
    }

    fn info(&self) -> String {
        let mode = if self.listener.is_some() {
            "server on"
        } else {
            "client of"
        };
        format!("vhost-user {mode} unix:{}", self.path.display())
    }

    fn listen_addr(&self) -> Option<String> {
        self.listener
            .as_ref()
            .map(|_| format!("unix:{}", self.path.display()))
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        self.retry_at
    }

    fn timers(&mut self, now: std::time::Instant) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.connect();
        }
    }

    fn drops(&self) -> Vec<(&'static str, u64)> {
        [
            ("bad-chain", self.dev.bad_chains),
            ("runt", self.dev.runts),
            ("bad-message", self.bad_messages),
            ("over-mtu", self.over_mtu),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

impl Drop for VhostUserNic {
    fn drop(&mut self) {
        // Only the socket netdevd made is removed (client mode's is the VMM's).
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
