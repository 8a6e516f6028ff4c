//! TAP devices (`net/tap.c`, `net/tap-linux.c`): one client with one fd per queue.
//!
//! - With a virtio-net header on the fd (`vnet_hdr`), every frame read or written is
//!   preceded by a 10-byte `struct virtio_net_hdr`; the backend turns on the kernel's
//!   checksum and TSO offloads (`TUNSETOFFLOAD`), so the kernel hands over 64 KiB TCP
//!   segments and partially checksummed frames, which travel through the core with their
//!   header ([`netdevd_core::frame::Frame::offload`]). A receiver with vnet headers takes
//!   them as they are; the core finishes them in software for any other.
//! - Without vnet headers, frames are plain, and offloaded frames given to us are finished
//!   by the core first.
//! - Frames shorter than 60 bytes are padded with zeros before they go to the peer, as
//!   QEMU's tap does.
//! - Reads: one frame per `readv` (header and frame land in place); the queues are read in
//!   turn. A queue is read only after epoll reported it readable (level-triggered, so
//!   nothing is missed), and then once per report, unless it was reported in two loop turns
//!   in a row: then it is read until EAGAIN. A guest that sends a frame now and then (a
//!   request, a round trip) so costs one `readv` per frame, not one more that answers
//!   EAGAIN; a guest that sends many still costs one EAGAIN per burst.
//!   Writes: one `writev` per frame on queue 0; EAGAIN answers busy until writable.
//! - Multiqueue: every queue is read; frames to the host go out on queue 0 (the kernel
//!   accepts a frame on any queue). A NIC with queues of its own maps them later.
//! - On delete: the down-script runs (if this tap was created with one), fds close.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use netdevd_core::frame::{Frame, VirtioNetHdr, MAX_FRAME};
use netdevd_core::net::{Endpoint, Rx};
use rustix::io::{Errno, IoSlice};

use crate::{Backend, BackendError, Events, Interest, Ready, Registration};

/// A tap to drive.
#[derive(Debug)]
pub struct TapConfig {
    /// One fd per queue.
    pub fds: Vec<OwnedFd>,
    /// The fds carry a virtio-net header.
    pub vnet_hdr: bool,
    pub ifname: String,
    /// `(script, ifname)` to run when the tap is deleted.
    pub downscript: Option<PathBuf>,
    /// QEMU's info string (`ifname=X,script=S,downscript=D`, `fd=N`, `helper=H`).
    pub info: String,
}

struct Queue {
    fd: OwnedFd,
    interest: Interest,
    /// Epoll reported it readable and it has not been read since (or read until EAGAIN).
    armed: bool,
    /// Read until EAGAIN while armed, not once.
    drain: bool,
    /// The loop turn it was last reported readable in.
    last_turn: u64,
}

/// The backend.
pub struct TapBackend {
    reg: Registration,
    queues: Vec<Queue>,
    vnet_hdr: bool,
    ifname: String,
    downscript: Option<PathBuf>,
    paused: bool,
    /// Queue 0 answered EAGAIN: busy until it is writable.
    blocked: bool,
    next_queue: usize,
    events: Events,
    info: String,
    warned: bool,
}

impl TapBackend {
    pub fn new(reg: Registration, cfg: TapConfig) -> Result<Self, BackendError> {
        if cfg.fds.is_empty() {
            return Err(BackendError::Msg("a tap needs at least one queue".into()));
        }
        let mut queues = Vec::new();
        for (i, fd) in cfg.fds.into_iter().enumerate() {
            netdevd_sys::set_nonblocking(fd.as_fd(), true)
                .map_err(|e| BackendError::io("can't use tap fd", e))?;
            if cfg.vnet_hdr {
                netdevd_sys::tap::tap_set_vnet_hdr_size(fd.as_fd(), VirtioNetHdr::LEN as i32)
                    .map_err(|e| BackendError::io("TUNSETVNETHDRSZ ioctl failed", e))?;
                use netdevd_sys::tap::*;
                // Ask for checksum and TSO offloads; ECN-marked TSO too when the kernel can.
                let want = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
                if tap_set_offload(fd.as_fd(), want | TUN_F_TSO_ECN).is_err() {
                    let _ = tap_set_offload(fd.as_fd(), want);
                }
            }
            reg.add(fd.as_fd(), i as u32, Interest::READ)
                .map_err(|e| BackendError::io("can't watch tap", e))?;
            queues.push(Queue {
                fd,
                interest: Interest::READ,
                armed: true,
                drain: true,
                last_turn: 0,
            });
        }
        Ok(TapBackend {
            reg,
            queues,
            vnet_hdr: cfg.vnet_hdr,
            ifname: cfg.ifname,
            downscript: cfg.downscript,
            paused: false,
            blocked: false,
            next_queue: 0,
            events: Events {
                link: Some(true),
                drained: false,
            },
            info: cfg.info,
            warned: false,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn update_interest(&mut self) {
        for (i, q) in self.queues.iter_mut().enumerate() {
            let want = Interest::level(!self.paused, i == 0 && self.blocked);
            if want != q.interest && self.reg.modify(q.fd.as_fd(), i as u32, want).is_ok() {
                q.interest = want;
            }
        }
    }
}

impl Endpoint for TapBackend {
    fn receive(&mut self, frame: &Frame) -> Rx {
        if self.blocked {
            return Rx::Busy;
        }
        let Some(q) = self.queues.first() else {
            return Rx::Dropped;
        };
        let r = if self.vnet_hdr {
            let hdr = frame.offload.unwrap_or_default().to_bytes();
            rustix::io::writev(&q.fd, &[IoSlice::new(&hdr), IoSlice::new(&frame.data)])
        } else {
            rustix::io::write(&q.fd, &frame.data)
        };
        match r {
            Ok(_) => Rx::Taken,
            Err(Errno::AGAIN) | Err(Errno::INTR) => {
                self.blocked = true;
                self.update_interest();
                Rx::Busy
            }
            Err(e) => {
                // EIO while the interface is down, EINVAL for a frame it refuses.
                if !self.warned {
                    tracing::warn!(tap = %self.ifname, "write failed, dropping frames: {e}");
                    self.warned = true;
                }
                Rx::Dropped
            }
        }
    }

    fn accepts_offloads(&self) -> bool {
        self.vnet_hdr
    }

    fn close(&mut self) {
        for q in self.queues.drain(..) {
            self.reg.remove(q.fd.as_fd());
        }
        if let Some(script) = self.downscript.take() {
            if let Err(e) = crate::run_script(&script, &self.ifname) {
                tracing::warn!(tap = %self.ifname, "{e}");
            }
        }
    }
}

impl Backend for TapBackend {
    fn ready(&mut self, sub: u32, r: Ready) {
        if let Some(q) = self.queues.get_mut(sub as usize) {
            if r.readable || r.closed {
                let turn = self.reg.turn();
                q.armed = true;
                q.drain = q.last_turn + 1 == turn;
                q.last_turn = turn;
            }
        }
        if sub == 0 && r.writable && self.blocked {
            self.blocked = false;
            self.events.drained = true;
            self.update_interest();
        }
    }

    fn poll_frame(&mut self, out: &mut Frame) -> bool {
        if self.paused {
            return false;
        }
        let n = self.queues.len();
        for k in 0..n {
            let i = (self.next_queue + k) % n;
            let q = &mut self.queues[i];
            if !q.armed {
                continue;
            }
            let fd = &q.fd;
            // Into the buffer's spare capacity: a 64 KiB buffer zeroed for every read would
            // cost more than the read.
            out.data.clear();
            let mut hdr = [0u8; VirtioNetHdr::LEN];
            let head: &mut [u8] = if self.vnet_hdr { &mut hdr } else { &mut [] };
            let r = netdevd_sys::readv_append(fd.as_fd(), head, &mut out.data, MAX_FRAME)
                .map(|n| n.saturating_sub(head.len()));
            match r {
                Ok(len) if len > 0 => {
                    q.armed = q.drain;
                    out.offload =
                        VirtioNetHdr::parse(&hdr).filter(|h| self.vnet_hdr && h.needs_work());
                    if out.data.len() < 60 && out.offload.is_none() {
                        out.data.resize(60, 0);
                    }
                    self.next_queue = (i + 1) % n;
                    return true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => q.armed = false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.warned {
                        tracing::warn!(tap = %self.ifname, "read failed: {e}");
                        self.warned = true;
                    }
                }
            }
        }
        out.data.clear();
        false
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

impl Drop for TapBackend {
    fn drop(&mut self) {
        self.close();
    }
}
