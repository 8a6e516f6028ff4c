//! Datagram transports, one Ethernet frame per datagram, no header: the `socket` netdev's
//! `udp=`/`localaddr=`, `mcast=` and datagram `fd=` modes (`net/socket.c`), and QEMU 7.2's
//! `dgram` netdev over inet, unix or fd addresses (`net/dgram.c`).
//!
//! - Unicast: bound to the local address (SO_REUSEADDR), sends to the remote; every datagram
//!   arriving on the bound port is a frame, whatever its source (as QEMU).
//! - Multicast: bound to group:port (not INADDR_ANY), joined on the `localaddr` interface or
//!   any, IP_MULTICAST_LOOP on (instances on one host hear each other and themselves),
//!   IP_MULTICAST_IF = localaddr when given, TTL left at the kernel's 1.
//! - fd: sent with `send()` when the socket is connected or has no destination, fixing
//!   QEMU's quirk where a passed inet datagram fd cannot transmit.
//! - Receive up to [`MAX_FRAME`] bytes per datagram; an empty datagram is dropped. Transmit:
//!   EAGAIN/ENOBUFS answers busy until writable; other errors drop the frame (logged once).
//!
//! The link is always up: a datagram socket has no connection to lose.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use netdevd_core::frame::{Frame, MAX_FRAME};
use netdevd_core::net::{Endpoint, Rx};
use rustix::io::Errno;
use rustix::net::{
    self as rnet, AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::{Backend, BackendError, Events, Interest, Ready, Registration};

const SUB_SOCK: u32 = 0;

/// How a datagram backend starts.
#[derive(Debug)]
pub enum DgramConfig {
    /// Bound to `local`, sending to `remote`.
    Udp {
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// Multicast group `group`, joined on interface `localaddr` (any if unspecified).
    Mcast {
        group: SocketAddrV4,
        localaddr: Option<Ipv4Addr>,
    },
    /// Unix datagram socket bound to `local`, sending to `remote`.
    Unix { local: PathBuf, remote: PathBuf },
    /// A datagram socket passed in; `dest` where to send if it is not connected.
    Fd {
        fd: OwnedFd,
        dest: Option<SocketAddr>,
    },
}

#[derive(Debug, Clone)]
enum Dest {
    None,
    Inet(SocketAddr),
    Unix(SocketAddrUnix),
}

/// The backend.
pub struct DgramBackend {
    reg: Registration,
    sock: Option<OwnedFd>,
    dest: Dest,
    /// Unix socket file this backend bound (removed on close).
    owned_path: Option<PathBuf>,
    paused: bool,
    blocked: bool,
    interest: Interest,
    events: Events,
    info: String,
    warned: bool,
}

fn err(what: String, e: Errno) -> BackendError {
    BackendError::io(what, io::Error::from(e))
}

fn udp_socket() -> Result<OwnedFd, BackendError> {
    let fd = rnet::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| err("can't create datagram socket".into(), e))?;
    rnet::sockopt::set_socket_reuseaddr(&fd, true)
        .map_err(|e| err("can't set socket option SO_REUSEADDR".into(), e))?;
    Ok(fd)
}

impl DgramBackend {
    pub fn new(reg: Registration, config: DgramConfig) -> Result<Self, BackendError> {
        let (sock, dest, owned_path, info) = match config {
            DgramConfig::Udp { local, remote } => {
                let fd = udp_socket()?;
                rnet::bind(&fd, &local)
                    .map_err(|e| err(format!("can't bind ip={} to socket", local.ip()), e))?;
                (
                    fd,
                    Dest::Inet(remote.into()),
                    None,
                    format!("udp={local}/{remote}"),
                )
            }
            DgramConfig::Mcast { group, localaddr } => {
                if !group.ip().is_multicast() {
                    return Err(BackendError::Msg(format!(
                        "specified mcastaddr {} (0x{:08x}) does not contain a multicast address",
                        group.ip(),
                        u32::from(*group.ip())
                    )));
                }
                let fd = udp_socket()?;
                rnet::bind(&fd, &group)
                    .map_err(|e| err(format!("can't bind ip={} to socket", group.ip()), e))?;
                let iface = localaddr.unwrap_or(Ipv4Addr::UNSPECIFIED);
                rnet::sockopt::set_ip_add_membership(&fd, group.ip(), &iface).map_err(|e| {
                    err(
                        format!("can't add socket to multicast group {}", group.ip()),
                        e,
                    )
                })?;
                rnet::sockopt::set_ip_multicast_loop(&fd, true)
                    .map_err(|e| err("can't force multicast message to loopback".into(), e))?;
                if let Some(l) = localaddr {
                    rnet::sockopt::set_ip_multicast_if(&fd, &l)
                        .map_err(|e| err("can't set socket option IP_MULTICAST_IF".into(), e))?;
                }
                (fd, Dest::Inet(group.into()), None, format!("mcast={group}"))
            }
            DgramConfig::Unix { local, remote } => {
                let la = SocketAddrUnix::new(&local).map_err(|_| {
                    BackendError::Msg(format!(
                        "UNIX socket path '{}' is too long",
                        local.display()
                    ))
                })?;
                let ra = SocketAddrUnix::new(&remote).map_err(|_| {
                    BackendError::Msg(format!(
                        "UNIX socket path '{}' is too long",
                        remote.display()
                    ))
                })?;
                match std::fs::remove_file(&local) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(BackendError::io(
                            format!("failed to unlink socket {}", local.display()),
                            e,
                        ))
                    }
                }
                let fd = rnet::socket_with(
                    AddressFamily::UNIX,
                    SocketType::DGRAM,
                    SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    None,
                )
                .map_err(|e| err("can't create datagram socket".into(), e))?;
                rnet::bind(&fd, &la).map_err(|e| {
                    err(format!("can't bind unix={} to socket", local.display()), e)
                })?;
                let info = format!("udp={}:{}", local.display(), remote.display());
                (fd, Dest::Unix(ra), Some(local), info)
            }
            DgramConfig::Fd { fd, dest } => {
                netdevd_sys::set_nonblocking(fd.as_fd(), true)
                    .map_err(|e| BackendError::io("can't use fd", e))?;
                let d = match dest {
                    Some(a) => Dest::Inet(a),
                    None => Dest::None,
                };
                (fd, d, None, "datagram fd".to_string())
            }
        };
        let reg2 = reg.clone();
        reg2.add(sock.as_fd(), SUB_SOCK, Interest::READ)
            .map_err(|e| BackendError::io("can't watch socket", e))?;
        Ok(DgramBackend {
            reg,
            sock: Some(sock),
            dest,
            owned_path,
            paused: false,
            blocked: false,
            interest: Interest::READ,
            events: Events {
                link: Some(true),
                drained: false,
            },
            info,
            warned: false,
        })
    }

    /// The bound local address (for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        rnet::getsockname(self.sock.as_ref()?)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok())
    }

    fn update_interest(&mut self) {
        let want = Interest::level(!self.paused, self.blocked);
        if want != self.interest {
            if let Some(s) = &self.sock {
                if self.reg.modify(s.as_fd(), SUB_SOCK, want).is_ok() {
                    self.interest = want;
                }
            }
        }
    }

    fn send(&self, data: &[u8]) -> Result<usize, Errno> {
        let Some(s) = &self.sock else {
            return Err(Errno::BADF);
        };
        match &self.dest {
            Dest::Inet(a) => rnet::sendto(s, data, SendFlags::NOSIGNAL, a),
            Dest::Unix(a) => rnet::sendto(s, data, SendFlags::NOSIGNAL, a),
            Dest::None => rnet::send(s, data, SendFlags::NOSIGNAL),
        }
    }
}

impl Endpoint for DgramBackend {
    fn receive(&mut self, frame: &Frame) -> Rx {
        if self.blocked {
            return Rx::Busy;
        }
        match self.send(&frame.data) {
            Ok(_) => Rx::Taken,
            Err(Errno::AGAIN) | Err(Errno::NOBUFS) | Err(Errno::INTR) => {
                self.blocked = true;
                self.update_interest();
                Rx::Busy
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(backend = %self.info, "send failed, dropping frames: {e}");
                    self.warned = true;
                }
                Rx::Dropped
            }
        }
    }

    fn close(&mut self) {
        if let Some(s) = self.sock.take() {
            self.reg.remove(s.as_fd());
        }
        if let Some(p) = self.owned_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Backend for DgramBackend {
    fn ready(&mut self, _sub: u32, r: Ready) {
        if r.writable && self.blocked {
            self.blocked = false;
            self.events.drained = true;
            self.update_interest();
        }
    }

    fn poll_frame(&mut self, out: &mut Frame) -> bool {
        if self.paused {
            return false;
        }
        let Some(s) = self.sock.as_ref() else {
            return false;
        };
        // Received straight into the frame's buffer: no copy in between.
        out.offload = None;
        loop {
            // Into the spare capacity: zeroing 68 KiB per datagram would cost more than it.
            out.data.clear();
            out.data.reserve(MAX_FRAME);
            let room = rustix::buffer::spare_capacity(&mut out.data);
            match rnet::recv(s, room, RecvFlags::DONTWAIT) {
                Ok((0, _)) => continue,
                Ok(_) => {
                    out.data.truncate(MAX_FRAME);
                    return true;
                }
                Err(Errno::AGAIN) => return false,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    // ICMP errors from a previous send surface here on connected sockets;
                    // they say nothing about the next datagram.
                    tracing::debug!(backend = %self.info, "recv: {e}");
                    return false;
                }
            }
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
}

impl Drop for DgramBackend {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::rc::Rc;

    fn reg() -> Registration {
        Registration::new(Rc::new(crate::Reactor::new().unwrap()), 0)
    }

    fn pull(b: &mut DgramBackend) -> Option<Vec<u8>> {
        let mut f = Frame::new(Vec::new());
        for _ in 0..200 {
            if b.poll_frame(&mut f) {
                return Some(f.data);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn udp_both_ways_from_any_source() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = DgramBackend::new(
            reg(),
            DgramConfig::Udp {
                local: "127.0.0.1:0".parse().unwrap(),
                remote: match peer.local_addr().unwrap() {
                    SocketAddr::V4(a) => a,
                    _ => unreachable!(),
                },
            },
        )
        .unwrap();
        let local = b.local_addr().unwrap();
        assert_eq!(b.receive(&Frame::new(vec![1; 1514])), Rx::Taken);
        let mut buf = [0u8; 2000];
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[1; 1514][..]);
        // Any source is heard.
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other.send_to(&[2; 60], local).unwrap();
        assert_eq!(pull(&mut b), Some(vec![2; 60]));
        // A 64 KiB datagram is one frame.
        peer.send_to(&vec![3u8; 65000], local).unwrap();
        assert_eq!(pull(&mut b).map(|f| f.len()), Some(65000));
    }

    #[test]
    fn unix_datagrams() {
        let dir = std::env::temp_dir().join(format!("netdevd-dgram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (la, ra) = (dir.join("a.sock"), dir.join("b.sock"));
        let peer = std::os::unix::net::UnixDatagram::bind(&ra).unwrap();
        let mut b = DgramBackend::new(
            reg(),
            DgramConfig::Unix {
                local: la.clone(),
                remote: ra.clone(),
            },
        )
        .unwrap();
        assert_eq!(b.receive(&Frame::new(vec![5; 100])), Rx::Taken);
        let mut buf = [0u8; 200];
        assert_eq!(peer.recv(&mut buf).unwrap(), 100);
        peer.send_to(&[6; 42], &la).unwrap();
        assert_eq!(pull(&mut b), Some(vec![6; 42]));
        b.close();
        assert!(!la.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn passed_connected_fd_can_transmit() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mine = UdpSocket::bind("127.0.0.1:0").unwrap();
        mine.connect(peer.local_addr().unwrap()).unwrap();
        let mut b = DgramBackend::new(
            reg(),
            DgramConfig::Fd {
                fd: OwnedFd::from(mine),
                dest: None,
            },
        )
        .unwrap();
        assert_eq!(b.receive(&Frame::new(vec![7; 60])), Rx::Taken);
        let mut buf = [0u8; 100];
        assert_eq!(peer.recv(&mut buf).unwrap(), 60);
    }

    #[test]
    fn non_multicast_group_is_refused() {
        let e = DgramBackend::new(
            reg(),
            DgramConfig::Mcast {
                group: "127.0.0.1:5000".parse().unwrap(),
                localaddr: None,
            },
        )
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "specified mcastaddr 127.0.0.1 (0x7f000001) does not contain a multicast address"
        );
    }
}
