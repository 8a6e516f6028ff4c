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
use std::os::fd::AsFd;
use std::time::Instant;

use netdevd_core::frame::Frame;
use netdevd_core::net::{Endpoint, Rx};
use netdevd_usernet::stack::FlowId;
use netdevd_usernet::{Config, HostIo, Stack};

use crate::{Backend, Events, Interest, Ready, Registration};

/// Datagrams read from one host socket per loop turn.
pub const READS_PER_WAKEUP: usize = 64;

/// The backend.
pub struct UserBackend {
    reg: Registration,
    stack: Stack,
    socks: HashMap<FlowId, UdpSocket>,
    events: Events,
    buf: Vec<u8>,
    info: String,
}

/// The host side the stack sees.
struct Host<'a> {
    reg: &'a Registration,
    socks: &'a mut HashMap<FlowId, UdpSocket>,
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
        self.socks.insert(id, s);
        Ok(())
    }

    fn udp_send(&mut self, id: FlowId, data: &[u8]) -> io::Result<()> {
        match self.socks.get(&id) {
            Some(s) => s.send(data).map(|_| ()),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    fn udp_close(&mut self, id: FlowId) {
        if let Some(s) = self.socks.remove(&id) {
            self.reg.remove(s.as_fd());
        }
    }
}

impl UserBackend {
    pub fn new(reg: Registration, cfg: Config) -> Self {
        let info = format!(
            "net={}/{},host={},dns={}",
            cfg.net, cfg.prefix, cfg.host, cfg.dns
        );
        UserBackend {
            reg,
            stack: Stack::new(cfg),
            socks: HashMap::new(),
            events: Events {
                link: Some(true),
                drained: false,
            },
            buf: vec![0u8; 65536],
            info,
        }
    }
}

impl Endpoint for UserBackend {
    fn receive(&mut self, frame: &Frame) -> Rx {
        let mut host = Host {
            reg: &self.reg,
            socks: &mut self.socks,
        };
        self.stack
            .from_guest(&frame.data, Instant::now(), &mut host);
        Rx::Taken
    }

    fn close(&mut self) {
        for (_, s) in self.socks.drain() {
            self.reg.remove(s.as_fd());
        }
    }
}

impl Backend for UserBackend {
    fn ready(&mut self, sub: u32, r: Ready) {
        if !(r.readable || r.closed) {
            return;
        }
        let now = Instant::now();
        for _ in 0..READS_PER_WAKEUP {
            let Some(s) = self.socks.get(&sub) else {
                return;
            };
            match s.recv(&mut self.buf) {
                Ok(n) => self.stack.from_host(sub, &self.buf[..n], now),
                // ICMP errors (port unreachable) surface on connected sockets; not fatal.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(_) => return,
            }
        }
    }

    fn poll_frame(&mut self, out: &mut Frame) -> bool {
        match self.stack.pop_frame() {
            Some(f) => {
                out.data.clear();
                out.data.extend_from_slice(&f);
                out.offload = None;
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
