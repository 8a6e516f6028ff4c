//! The driver's side of a split virtqueue (virtio 1.2 §2.7), in memory shared through a
//! memfd: what a guest's virtio-net driver does, small enough for the device's unit tests,
//! its fuzz target and benchmarks to drive [`crate::NetDevice`] without a VM. Memory layout:
//! one region at guest address 0 (front-end user address the same), the rings of queue q at
//! `q * RING_SPAN`, buffers from [`BUFFERS`] on (room for [`QUEUES`] queues' rings).

use std::os::fd::OwnedFd;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::msg::{Header, Region, Request, VringAddr, FLAG_VERSION};

/// Room for each queue's rings (a 1024-entry ring needs 16 KiB + 2 KiB + 8 KiB).
pub const RING_SPAN: u64 = 64 << 10;
/// Queues the layout has room for.
pub const QUEUES: usize = crate::device::QUEUES;
/// Where buffers start.
pub const BUFFERS: u64 = QUEUES as u64 * RING_SPAN;

/// A header for a request (no reply wanted).
pub fn header(request: u32) -> Header {
    Header {
        request,
        flags: FLAG_VERSION,
        size: 0,
    }
}

/// The driver: the shared memory and each queue's indices.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u64,
    fd: OwnedFd,
    pub queue_size: u16,
    next_avail: [u16; QUEUES],
    last_used: [u16; QUEUES],
    /// Next free byte for buffers.
    bump: u64,
}

impl Driver {
    /// A driver with `size` bytes of shared memory and rings of `queue_size` entries.
    pub fn new(size: u64, queue_size: u16) -> std::io::Result<Driver> {
        let fd = rustix::fs::memfd_create("netdevd-vhost-driver", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, size)?;
        let file = std::fs::File::from(fd.try_clone()?);
        let m = MmapRegion::build(
            Some(FileOffset::new(file, 0)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let r = GuestRegionMmap::new(m, GuestAddress(0))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mem = GuestMemoryMmap::from_regions(vec![r])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Driver {
            mem,
            size,
            fd,
            queue_size,
            next_avail: [0; QUEUES],
            last_used: [0; QUEUES],
            bump: BUFFERS,
        })
    }

    fn desc(q: usize) -> u64 {
        q as u64 * RING_SPAN
    }
    fn avail(&self, q: usize) -> u64 {
        Self::desc(q) + 16 * u64::from(self.queue_size)
    }
    fn used(&self, q: usize) -> u64 {
        (self.avail(q) + 6 + 2 * u64::from(self.queue_size) + 3) & !3
    }

    /// The messages that set the device up with `features`: memory, the first pair's rings,
    /// kicks (none: the caller calls `kicked`), enabled.
    pub fn setup(&self, features: u64) -> std::io::Result<Vec<(Header, Request)>> {
        self.setup_pairs(features, 1)
    }

    /// As [`Driver::setup`], with `pairs` queue pairs.
    pub fn setup_pairs(
        &self,
        features: u64,
        pairs: usize,
    ) -> std::io::Result<Vec<(Header, Request)>> {
        let region = Region {
            guest_phys_addr: 0,
            size: self.size,
            user_addr: 0,
            mmap_offset: 0,
        };
        use crate::msg::code::*;
        let mut v = vec![
            (header(SET_FEATURES), Request::SetFeatures(features)),
            (
                header(SET_MEM_TABLE),
                Request::SetMemTable(vec![(region, self.fd.try_clone()?)]),
            ),
        ];
        for q in 0..(2 * pairs.min(QUEUES / 2)) as u32 {
            v.push((
                header(SET_VRING_NUM),
                Request::SetVringNum {
                    index: q,
                    num: u32::from(self.queue_size),
                },
            ));
            v.push((
                header(SET_VRING_ADDR),
                Request::SetVringAddr(VringAddr {
                    index: q,
                    flags: 0,
                    desc: Self::desc(q as usize),
                    used: self.used(q as usize),
                    avail: self.avail(q as usize),
                    log: 0,
                }),
            ));
            v.push((
                header(SET_VRING_BASE),
                Request::SetVringBase { index: q, num: 0 },
            ));
            v.push((
                header(SET_VRING_KICK),
                Request::SetVringKick { index: q, fd: None },
            ));
            v.push((
                header(SET_VRING_ENABLE),
                Request::SetVringEnable {
                    index: q,
                    enable: true,
                },
            ));
        }
        Ok(v)
    }

    /// Room for `len` bytes of buffer (wrapping back to the start when memory runs out).
    fn alloc(&mut self, len: u64) -> u64 {
        if self.bump + len > self.size {
            self.bump = BUFFERS;
        }
        let at = self.bump;
        self.bump += (len + 63) & !63;
        at
    }

    /// Offer one chain on queue `q`: `parts` are (bytes, device-writable) descriptors,
    /// written at table entries from `first` on. Returns the head.
    pub fn offer(&mut self, q: usize, first: u16, parts: &[(&[u8], bool)]) -> u16 {
        let n = parts.len();
        for (i, (bytes, write)) in parts.iter().enumerate() {
            let idx = (first as usize + i) % self.queue_size as usize;
            let addr = self.alloc(bytes.len() as u64);
            let _ = self.mem.write_slice(bytes, GuestAddress(addr));
            let next = ((idx + 1) % self.queue_size as usize) as u16;
            let flags = (if i + 1 < n { 1u16 } else { 0 }) | if *write { 2 } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = self
                .mem
                .write_slice(&d, GuestAddress(Self::desc(q) + 16 * idx as u64));
        }
        self.publish(q, first)
    }

    /// Write `bytes` into the shared memory at a fresh place; returns its address (for
    /// [`Driver::offer_at`], which offers buffers again without copying them each time).
    pub fn place(&mut self, bytes: &[u8]) -> u64 {
        let at = self.alloc(bytes.len() as u64);
        let _ = self.mem.write_slice(bytes, GuestAddress(at));
        at
    }

    /// Offer a chain of buffers already in memory: (address, length, device-writable), in
    /// table entries from `first` on. Returns the head.
    pub fn offer_at(&mut self, q: usize, first: u16, parts: &[(u64, u32, bool)]) -> u16 {
        let n = parts.len();
        for (i, (addr, len, write)) in parts.iter().enumerate() {
            let idx = (first as usize + i) % self.queue_size as usize;
            let next = ((idx + 1) % self.queue_size as usize) as u16;
            let flags = (if i + 1 < n { 1u16 } else { 0 }) | if *write { 2 } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = self
                .mem
                .write_slice(&d, GuestAddress(Self::desc(q) + 16 * idx as u64));
        }
        self.publish(q, first)
    }

    /// Put `head` on queue `q`'s avail ring and bump its index.
    pub fn publish(&mut self, q: usize, head: u16) -> u16 {
        let slot = self.next_avail[q] % self.queue_size;
        let _ = self.mem.write_slice(
            &head.to_le_bytes(),
            GuestAddress(self.avail(q) + 4 + 2 * u64::from(slot)),
        );
        self.next_avail[q] = self.next_avail[q].wrapping_add(1);
        let _ = self.mem.write_slice(
            &self.next_avail[q].to_le_bytes(),
            GuestAddress(self.avail(q) + 2),
        );
        head
    }

    /// Write raw bytes anywhere in the shared memory (a fuzzer's corruption).
    pub fn poke(&self, at: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(at % self.size));
    }

    /// Used elements (head, len) the device published on queue `q` since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let mut b = [0u8; 2];
        let _ = self.mem.read_slice(&mut b, GuestAddress(self.used(q) + 2));
        let idx = u16::from_le_bytes(b);
        let mut out = Vec::new();
        while self.last_used[q] != idx {
            let slot = self.last_used[q] % self.queue_size;
            let mut e = [0u8; 8];
            let _ = self
                .mem
                .read_slice(&mut e, GuestAddress(self.used(q) + 4 + 8 * u64::from(slot)));
            out.push((
                u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            ));
            self.last_used[q] = self.last_used[q].wrapping_add(1);
        }
        out
    }

    /// The bytes of descriptor `idx` of queue `q` (what the device wrote into a receive
    /// buffer), up to `len`.
    pub fn read_desc(&self, q: usize, idx: u16, len: usize) -> Vec<u8> {
        let mut d = [0u8; 16];
        let _ = self
            .mem
            .read_slice(&mut d, GuestAddress(Self::desc(q) + 16 * u64::from(idx)));
        let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let dlen = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as usize;
        let mut out = vec![0u8; len.min(dlen)];
        let _ = self.mem.read_slice(&mut out, GuestAddress(addr));
        out
    }
}
