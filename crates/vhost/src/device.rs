//! The virtio-net device as a vhost-user back-end, sans-IO: [`NetDevice::handle`] takes one
//! message from the front-end and says what to answer; [`NetDevice::tx_pop`] takes the
//! guest's next transmitted frame off the transmit queue, [`NetDevice::rx_push`] puts a frame
//! into the guest's receive buffers; [`NetDevice::notify`] says which queues' call eventfds
//! are due. The fds (the socket, kick and call eventfds) are the caller's to watch and
//! write; the device only holds them.
//!
//! Up to [`MAX_QUEUE_PAIRS`] queue pairs (`MQ`; queue 2p receives, 2p+1 transmits): transmit
//! queues are taken in turn, a received frame goes to one of the running receive queues by
//! a hash of its flow. Features offered, besides `MQ`: `VERSION_1`, `MTU` (with the protocol
//! feature `NET_MTU`: frames toward the guest over the VMM's MTU are refused, [`RxPush::OverMtu`]),
//! `MRG_RXBUF`, `CSUM`, `GUEST_CSUM`, `HOST_TSO4/6`, `GUEST_TSO4/6`, `RING_INDIRECT_DESC`,
//! `RING_EVENT_IDX`, and the vhost-user protocol features `REPLY_ACK`, `RARP` (the VMM's
//! `SEND_RARP` after a migration: the caller sends the announcement) and
//! `CONFIGURE_MEM_SLOTS`. Offloads travel as the frame's virtio-net header: a guest's 64 KiB
//! TSO segment leaves the device whole, and frames with offload work left go to a guest that
//! took the `GUEST_*` features as they are.
//!
//! Guest memory is never trusted: the rings and every descriptor go through `virtio-queue`
//! and `vm-memory`'s checked accessors; a chain that points outside guest memory, is too long
//! or has the wrong direction is returned to the guest as used and counted
//! ([`NetDevice::bad_chains`]), never a panic.

use std::num::Wrapping;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use netdevd_wire::VirtioNetHdr;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::memory::{GuestMem, MAX_MEM_SLOTS};
use crate::msg::{self, Header, Request};

/// Virtio and virtio-net feature bits.
pub mod feature {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MTU: u64 = 1 << 3;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const MQ: u64 = 1 << 22;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// vhost-user's own: the protocol features exist.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
}

/// vhost-user protocol feature bits.
pub mod protocol {
    pub const MQ: u64 = 1 << 0;
    pub const RARP: u64 = 1 << 2;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const NET_MTU: u64 = 1 << 4;
    pub const CONFIG: u64 = 1 << 9;
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
}

use feature::*;

/// What the device offers.
pub const FEATURES: u64 = VERSION_1
    | MTU
    | MRG_RXBUF
    | CSUM
    | GUEST_CSUM
    | HOST_TSO4
    | HOST_TSO6
    | GUEST_TSO4
    | GUEST_TSO6
    | RING_INDIRECT_DESC
    | RING_EVENT_IDX
    | MQ
    | PROTOCOL_FEATURES;
/// The vhost-user protocol features offered.
pub const PROTOCOL_FEATURES_OFFERED: u64 = protocol::MQ
    | protocol::REPLY_ACK
    | protocol::CONFIGURE_MEM_SLOTS
    | protocol::RARP
    | protocol::NET_MTU;
/// The MTUs `NET_SET_MTU` accepts (virtio-net's `host_mtu` range, DPDK's check).
pub const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;
/// What a frame may carry beyond its MTU: the Ethernet header and one VLAN tag.
pub const MTU_OVERHEAD: usize = 14 + 4;
/// Queue pairs served (`MQ`): queue 2p receives, 2p+1 transmits.
pub const MAX_QUEUE_PAIRS: usize = 4;
/// Queues in all.
pub const QUEUES: usize = 2 * MAX_QUEUE_PAIRS;
/// The first pair's receive and transmit queues (the only ones without `MQ`).
pub const RX: usize = 0;
pub const TX: usize = 1;
/// The largest ring (QEMU's virtio-net allows 1024).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// The largest frame taken from the guest, header excluded (QEMU's NET_BUFSIZE).
pub const MAX_FRAME: usize = 4096 + 65536;

/// One virtqueue and its eventfds.
#[derive(Debug)]
struct Vring {
    queue: Queue,
    /// `SET_VRING_ADDR` as given (front-end user addresses).
    addr: Option<msg::VringAddr>,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    enabled: bool,
    /// Kicked at least once since it was set up (vhost-user starts a ring at its kick).
    started: bool,
    /// Buffers were used since the last notification check.
    used: bool,
    /// The used index at the last notification check (`RING_EVENT_IDX`'s "old").
    signalled: Wrapping<u16>,
    /// Transmit chains taken and not yet published as used: published together (one used
    /// index update) at the notification check, or every [`USED_BATCH`].
    pending: Vec<(u16, u32)>,
}

/// Transmitted chains published as used at once, at most.
pub const USED_BATCH: usize = 64;

impl Vring {
    fn new() -> Vring {
        Vring {
            queue: Queue::new(MAX_QUEUE_SIZE).expect("a power of two"),
            addr: None,
            kick: None,
            call: None,
            enabled: false,
            started: false,
            used: false,
            signalled: Wrapping(0),
            pending: Vec::new(),
        }
    }

    /// Publish the pending used chains.
    fn publish(&mut self, mem: &GuestMemoryMmap) {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.add_used_batch(mem, &p);
            self.pending = p;
            self.pending.clear();
        }
    }

    /// Publish used buffers `(head, len)` at once: every element first, then the used
    /// index, so that a driver reading mergeable buffers never sees the first of a frame's
    /// buffers without the others (`virtio-queue`'s `add_used` publishes each one).
    fn add_used_batch(&mut self, mem: &GuestMemoryMmap, used: &[(u16, u32)]) -> bool {
        let base = self.queue.used_ring();
        let size = self.queue.size();
        if size == 0 {
            return false;
        }
        let mut next = Wrapping(self.queue.next_used());
        for &(head, len) in used {
            let at = base + 4 + u64::from(next.0 % size) * 8;
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            e[4..].copy_from_slice(&len.to_le_bytes());
            if mem.write_slice(&e, GuestAddress(at)).is_err() {
                return false;
            }
            next += 1;
        }
        std::sync::atomic::fence(Ordering::Release);
        if mem
            .store(next.0.to_le(), GuestAddress(base + 2), Ordering::Release)
            .is_err()
        {
            return false;
        }
        self.queue.set_next_used(next.0);
        self.used = true;
        true
    }

    /// Whether the driver wants an interrupt for the buffers used since the last check
    /// (virtio 1.2 §2.7.10: the used event index, or the avail ring's NO_INTERRUPT flag).
    fn wants_interrupt(&mut self, mem: &GuestMemoryMmap) -> bool {
        let new = Wrapping(self.queue.next_used());
        let old = std::mem::replace(&mut self.signalled, new);
        let avail = self.queue.avail_ring();
        if self.queue.event_idx_enabled() {
            let at = avail + 4 + 2 * u64::from(self.queue.size());
            let Ok(ev) = mem.load::<u16>(GuestAddress(at), Ordering::Acquire) else {
                return true;
            };
            let ev = Wrapping(u16::from_le(ev));
            (new - ev - Wrapping(1)) < (new - old)
        } else {
            mem.load::<u16>(GuestAddress(avail), Ordering::Acquire)
                .map_or(true, |f| u16::from_le(f) & 1 == 0)
        }
    }
}

/// What the caller does after a message.
#[derive(Debug, Default)]
pub struct Handled {
    /// Bytes to send back.
    pub reply: Option<Vec<u8>>,
    /// The kick eventfd of this queue changed (watch the new one).
    pub kick_changed: Option<usize>,
    /// The front-end asked for a gratuitous announcement from this MAC (`SEND_RARP`).
    pub rarp: Option<[u8; 6]>,
}

/// Why a message is refused (answered with a failure status where the front-end asked for
/// one; the connection goes on).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue {0} does not exist")]
    Queue(u32),
    #[error("ring size {0}")]
    RingSize(u32),
    #[error("features {0:#x} were not offered")]
    Features(u64),
    #[error("ring address outside guest memory")]
    RingAddr,
    #[error(transparent)]
    Memory(#[from] crate::memory::MemError),
    #[error("unsupported request {0}")]
    Unsupported(u32),
    #[error("MTU {0} outside 68..=65535")]
    Mtu(u64),
}

/// The outcome of [`NetDevice::rx_push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxPush {
    Taken,
    /// No receive buffers now (the guest will kick when it adds some).
    NoBuffers,
    /// Not deliverable (ring not running, chain unusable): counted.
    Dropped,
    /// Longer than the MTU the VMM set (`NET_SET_MTU`) and not a segmentation-offload
    /// frame: dropped, as a NIC with that MTU drops it; counted.
    OverMtu,
}

/// The device.
pub struct NetDevice {
    acked: u64,
    protocol_acked: u64,
    owned: bool,
    mem: GuestMem,
    vrings: Vec<Vring>,
    /// The transmit queue pair looked at first next time (round robin).
    next_tx: usize,
    /// Descriptor chains returned unused because they were malformed.
    pub bad_chains: u64,
    /// Frames from the guest too short to be Ethernet.
    pub runts: u64,
    /// The MTU the VMM set (`NET_SET_MTU`, QEMU's `host_mtu`), none until then.
    mtu: Option<u16>,
}

impl Default for NetDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl NetDevice {
    pub fn new() -> NetDevice {
        NetDevice {
            acked: 0,
            protocol_acked: 0,
            owned: false,
            mem: GuestMem::empty(),
            vrings: (0..QUEUES).map(|_| Vring::new()).collect(),
            next_tx: 0,
            bad_chains: 0,
            runts: 0,
            mtu: None,
        }
    }

    /// The MTU the VMM set with `NET_SET_MTU` (QEMU's `host_mtu`), if it did.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.acked
    }

    /// The virtio-net header's length for the negotiated features.
    fn hdr_len(&self) -> usize {
        if self.acked & (VERSION_1 | MRG_RXBUF) != 0 {
            12
        } else {
            VirtioNetHdr::LEN
        }
    }

    /// Whether the guest takes frames with offload work left (partial checksums, GSO).
    pub fn guest_offloads(&self) -> bool {
        self.acked & (GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6) == GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6
    }

    /// The kick eventfd of queue `q`, to watch.
    pub fn kick_fd(&self, q: usize) -> Option<BorrowedFd<'_>> {
        self.vrings.get(q)?.kick.as_ref().map(|f| f.as_fd())
    }

    /// Whether queue `q` runs: memory, addresses, a kick, enabled.
    pub fn running(&self, q: usize) -> bool {
        self.vrings
            .get(q)
            .is_some_and(|v| v.started && v.enabled && v.queue.ready())
    }

    /// Both queues run: the link is up for the guest.
    pub fn link_up(&self) -> bool {
        self.running(RX) && self.running(TX)
    }

    /// The kick of queue `q` fired (its eventfd was read).
    pub fn kicked(&mut self, q: usize) {
        if let Some(v) = self.vrings.get_mut(q) {
            v.started = true;
        }
        self.setup(q);
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring, DeviceError> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(DeviceError::Queue(index))
    }

    /// Make queue `q` ready when it has everything.
    fn setup(&mut self, q: usize) {
        let Some(v) = self.vrings.get_mut(q) else {
            return;
        };
        let Some(a) = v.addr else {
            v.queue.set_ready(false);
            return;
        };
        let (Some(desc), Some(avail), Some(used)) = (
            self.mem.uva_to_gpa(a.desc),
            self.mem.uva_to_gpa(a.avail),
            self.mem.uva_to_gpa(a.used),
        ) else {
            v.queue.set_ready(false);
            return;
        };
        let split = |x: u64| (Some(x as u32), Some((x >> 32) as u32));
        let (l, h) = split(desc);
        v.queue.set_desc_table_address(l, h);
        let (l, h) = split(avail);
        v.queue.set_avail_ring_address(l, h);
        let (l, h) = split(used);
        v.queue.set_used_ring_address(l, h);
        v.queue.set_event_idx(self.acked & RING_EVENT_IDX != 0);
        v.queue.set_ready(true);
        if !v.queue.is_valid(self.mem.mem()) {
            v.queue.set_ready(false);
        }
    }

    fn ack(&self, h: &Header, ok: bool) -> Option<Vec<u8>> {
        (self.protocol_acked & protocol::REPLY_ACK != 0 && h.need_reply())
            .then(|| msg::reply_u64(h.request, (!ok) as u64))
    }

    /// Handle one message. Errors are answered (when the front-end wants an answer) and
    /// logged; the device stays as it was.
    pub fn handle(&mut self, h: &Header, req: Request) -> Handled {
        let mut out = Handled::default();
        let r = self.apply(h, req, &mut out);
        if let Err(e) = &r {
            tracing::warn!(request = h.request, "vhost-user request refused: {e}");
        }
        if out.reply.is_none() {
            out.reply = self.ack(h, r.is_ok());
        }
        out
    }

    fn apply(&mut self, h: &Header, req: Request, out: &mut Handled) -> Result<(), DeviceError> {
        match req {
            Request::GetFeatures => out.reply = Some(msg::reply_u64(h.request, FEATURES)),
            Request::SetFeatures(f) => {
                if f & !FEATURES != 0 {
                    return Err(DeviceError::Features(f & !FEATURES));
                }
                self.acked = f;
                // Without protocol features, rings are enabled from the start.
                if f & PROTOCOL_FEATURES == 0 {
                    for v in &mut self.vrings {
                        v.enabled = true;
                    }
                }
                for q in 0..QUEUES {
                    self.setup(q);
                }
            }
            Request::GetProtocolFeatures => {
                out.reply = Some(msg::reply_u64(h.request, PROTOCOL_FEATURES_OFFERED))
            }
            Request::SetProtocolFeatures(f) => {
                if f & !PROTOCOL_FEATURES_OFFERED != 0 {
                    return Err(DeviceError::Features(f));
                }
                self.protocol_acked = f;
            }
            Request::SetOwner => self.owned = true,
            Request::ResetOwner => self.reset(),
            Request::GetQueueNum => {
                out.reply = Some(msg::reply_u64(h.request, MAX_QUEUE_PAIRS as u64))
            }
            Request::GetMaxMemSlots => {
                out.reply = Some(msg::reply_u64(h.request, MAX_MEM_SLOTS as u64))
            }
            Request::SetMemTable(t) => {
                self.mem = GuestMem::new(t)?;
                for q in 0..QUEUES {
                    self.setup(q);
                }
            }
            Request::AddMemReg(r, fd) => {
                self.mem = self.mem.add(r, fd)?;
                for q in 0..QUEUES {
                    self.setup(q);
                }
            }
            Request::RemMemReg(r) => {
                self.mem = self.mem.remove(&r);
                for q in 0..QUEUES {
                    self.setup(q);
                }
            }
            Request::SetVringNum { index, num } => {
                if num == 0 || num > MAX_QUEUE_SIZE as u32 || !num.is_power_of_two() {
                    return Err(DeviceError::RingSize(num));
                }
                self.vring(index)?.queue.set_size(num as u16);
            }
            Request::SetVringAddr(a) => {
                self.vring(a.index)?.addr = Some(a);
                self.setup(a.index as usize);
            }
            Request::SetVringBase { index, num } => {
                let v = self.vring(index)?;
                v.queue.set_next_avail(num as u16);
                v.queue.set_next_used(num as u16);
            }
            Request::GetVringBase { index } => {
                let mem = self.mem.mem();
                let v = self
                    .vrings
                    .get_mut(index as usize)
                    .ok_or(DeviceError::Queue(index))?;
                // What was taken is handed back before the ring stops.
                v.publish(mem);
                let base = v.queue.next_avail();
                // The ring stops; it starts again at its next kick.
                v.started = false;
                v.kick = None;
                out.kick_changed = Some(index as usize);
                out.reply = Some(msg::reply_state(h.request, index, base as u32));
            }
            Request::SetVringKick { index, fd } => {
                let v = self.vring(index)?;
                v.kick = fd;
                v.started = true;
                out.kick_changed = Some(index as usize);
                self.setup(index as usize);
            }
            Request::SetVringCall { index, fd } => self.vring(index)?.call = fd,
            Request::SetVringErr { index, .. } => {
                self.vring(index)?;
            }
            Request::SetVringEnable { index, enable } => {
                self.vring(index)?.enabled = enable;
            }
            Request::SendRarp(mac) => out.rarp = Some(mac),
            Request::NetSetMtu(m) => {
                if !MTU_RANGE.contains(&m) {
                    return Err(DeviceError::Mtu(m));
                }
                self.mtu = Some(m as u16);
            }
            Request::SetLogBase | Request::SetLogFd => {}
            Request::SetBackendReqFd(_) => {}
            Request::GetConfig { .. } | Request::SetConfig { .. } => {
                return Err(DeviceError::Unsupported(h.request))
            }
            Request::Unknown(c) => return Err(DeviceError::Unsupported(c)),
        }
        Ok(())
    }

    /// The front-end went away: everything is forgotten.
    pub fn reset(&mut self) {
        *self = NetDevice {
            bad_chains: self.bad_chains,
            runts: self.runts,
            ..NetDevice::new()
        };
    }

    /// The guest's next frame from the transmit queue into `data` (replaced); returns its
    /// offload metadata (`Some(None)`: a plain frame), or `None` when the queue holds nothing
    /// more (the kick is re-armed).
    pub fn tx_pop(&mut self, data: &mut Vec<u8>) -> Option<Option<VirtioNetHdr>> {
        // The pairs in turn, from the one after the last frame's, so that no queue starves
        // the others.
        for i in 0..MAX_QUEUE_PAIRS {
            let p = (self.next_tx + i) % MAX_QUEUE_PAIRS;
            if let Some(o) = self.tx_pop_from(2 * p + 1, data) {
                self.next_tx = p + 1;
                return Some(o);
            }
        }
        None
    }

    fn tx_pop_from(&mut self, q: usize, data: &mut Vec<u8>) -> Option<Option<VirtioNetHdr>> {
        if !self.running(q) {
            return None;
        }
        let hdr_len = self.hdr_len();
        let mut rearmed = false;
        // At most a ring's worth of chains per call: a guest's avail index cannot keep the
        // device here.
        for _ in 0..=u32::from(MAX_QUEUE_SIZE) {
            let mem = self.mem.mem();
            let v = &mut self.vrings[q];
            let Some(chain) = v.queue.pop_descriptor_chain(mem) else {
                // Empty: ask for a kick when more comes (event index or flags), and look once
                // more in case some came meanwhile (once: a guest's bogus avail index makes
                // "more came" true for ever).
                if !rearmed && v.queue.enable_notification(mem).unwrap_or(false) {
                    rearmed = true;
                    continue;
                }
                return None;
            };
            let head = chain.head_index();
            // The header into a small buffer, the frame straight into `data`: one copy out
            // of guest memory, nothing zeroed first.
            let mut hdr = [0u8; 12];
            let mut pos = 0usize;
            data.clear();
            let mut ok = true;
            for d in chain {
                let len = d.len() as usize;
                if d.is_write_only() || pos + len > hdr_len + MAX_FRAME {
                    ok = false;
                    break;
                }
                let mut addr = d.addr();
                let mut left = len;
                if pos < hdr_len {
                    let n = (hdr_len - pos).min(left);
                    if mem.read_slice(&mut hdr[pos..pos + n], addr).is_err() {
                        ok = false;
                        break;
                    }
                    pos += n;
                    left -= n;
                    let Some(a) = addr.checked_add(n as u64) else {
                        ok = false;
                        break;
                    };
                    addr = a;
                }
                if left > 0 {
                    if mem.write_all_volatile_to(addr, data, left).is_err() {
                        ok = false;
                        break;
                    }
                    pos += left;
                }
            }
            // Used either way: a malformed chain goes back to the guest, unread.
            v.pending.push((head, 0));
            if v.pending.len() >= USED_BATCH {
                v.publish(mem);
            }
            if !ok {
                self.bad_chains += 1;
                continue;
            }
            if pos < hdr_len + 14 {
                self.runts += 1;
                continue;
            }
            let Some(hdr) = VirtioNetHdr::parse(&hdr) else {
                self.runts += 1;
                continue;
            };
            return Some(hdr.needs_work().then_some(hdr));
        }
        None
    }

    /// Put `data` (with `offload` when the guest takes offloads, else a plain header) into
    /// the guest's receive buffers.
    pub fn rx_push(&mut self, data: &[u8], offload: Option<VirtioNetHdr>) -> RxPush {
        // A flow keeps to one receive queue of those running (with one pair, queue 0).
        let running: Vec<usize> = (0..MAX_QUEUE_PAIRS)
            .map(|p| 2 * p)
            .filter(|&q| self.running(q))
            .collect();
        if running.is_empty() {
            return RxPush::Dropped;
        }
        let gso = offload.is_some_and(|o| o.is_gso());
        if self
            .mtu
            .is_some_and(|m| !gso && data.len() > m as usize + MTU_OVERHEAD)
        {
            return RxPush::OverMtu;
        }
        let q = running[flow_hash(data) as usize % running.len()];
        let hdr_len = self.hdr_len();
        let mergeable = self.acked & MRG_RXBUF != 0;
        let total = hdr_len + data.len();
        let mem = self.mem.mem();
        let v = &mut self.vrings[q];
        // The chains that take the frame: one, or with mergeable buffers as many as needed.
        let mut chains: Vec<(u16, Vec<(GuestAddress, usize)>)> = Vec::new();
        let mut room = 0usize;
        let mut rearmed = false;
        while room < total && (mergeable || chains.is_empty()) {
            let Some(chain) = v.queue.pop_descriptor_chain(mem) else {
                for _ in 0..chains.len() {
                    v.queue.go_to_previous_position();
                }
                chains.clear();
                room = 0;
                // Out of buffers: the guest kicks when it adds some; look once more in case
                // some came meanwhile.
                if !rearmed && v.queue.enable_notification(mem).unwrap_or(false) {
                    rearmed = true;
                    continue;
                }
                return RxPush::NoBuffers;
            };
            let head = chain.head_index();
            let mut parts = Vec::new();
            let mut bad = false;
            for d in chain {
                if !d.is_write_only() {
                    bad = true;
                    break;
                }
                parts.push((d.addr(), d.len() as usize));
                room += d.len() as usize;
            }
            if bad || parts.is_empty() {
                // Unusable: back to the guest unused; the frame waits for good buffers.
                for _ in 0..chains.len() {
                    v.queue.go_to_previous_position();
                }
                let _ = v.queue.add_used(mem, head, 0);
                v.used = true;
                self.bad_chains += 1;
                return RxPush::Dropped;
            }
            chains.push((head, parts));
        }
        if room < total {
            // One chain too small for the frame (no mergeable buffers): it goes back unused.
            for (head, _) in &chains {
                let _ = v.queue.add_used(mem, *head, 0);
            }
            v.used = true;
            return RxPush::Dropped;
        }
        // The header the guest reads: the offload metadata (or none) and, with mergeable
        // buffers, `num_buffers`.
        let base = offload.filter(|o| o.needs_work()).unwrap_or_default();
        let mut hdr = [0u8; VirtioNetHdr::LEN + 2];
        hdr[..VirtioNetHdr::LEN].copy_from_slice(&base.to_bytes());
        hdr[VirtioNetHdr::LEN..].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let hdr = &hdr[..hdr_len];
        let mut src = hdr.iter().chain(data.iter()).copied();
        let mut left = total;
        let mut failed = false;
        let mut buf = Vec::new();
        let mut used = Vec::with_capacity(chains.len());
        for (head, parts) in &chains {
            let mut written = 0usize;
            for (addr, len) in parts {
                let n = (*len).min(left);
                if n == 0 {
                    break;
                }
                buf.clear();
                buf.extend(src.by_ref().take(n));
                if mem.write_slice(&buf, *addr).is_err() {
                    failed = true;
                }
                written += n;
                left -= n;
            }
            used.push((*head, written as u32));
        }
        if !v.add_used_batch(mem, &used) {
            failed = true;
        }
        if failed {
            self.bad_chains += 1;
            return RxPush::Dropped;
        }
        RxPush::Taken
    }

    /// The queues whose call eventfd should be signalled now (buffers were used and the
    /// guest wants to hear of it), with the eventfd.
    pub fn notify(&mut self) -> Vec<BorrowedFd<'_>> {
        let mem = self.mem.mem();
        let mut due = vec![false; self.vrings.len()];
        for (q, v) in self.vrings.iter_mut().enumerate() {
            v.publish(mem);
            if v.used && v.queue.ready() {
                v.used = false;
                fence_acquire();
                due[q] = v.wants_interrupt(mem);
            }
        }
        self.vrings
            .iter()
            .zip(due)
            .filter(|(_, d)| *d)
            .filter_map(|(v, _)| v.call.as_ref().map(|f| f.as_fd()))
            .collect()
    }

    /// Whether a transmit queue has chains the device has not taken (read from the ring).
    pub fn tx_waiting(&self) -> bool {
        (0..MAX_QUEUE_PAIRS).map(|p| 2 * p + 1).any(|q| {
            let v = &self.vrings[q];
            self.running(q)
                && v.queue
                    .avail_idx(self.mem.mem(), Ordering::Acquire)
                    .is_ok_and(|i| i != Wrapping(v.queue.next_avail()))
        })
    }
}

/// A hash of a frame's flow: IPv4 addresses and ports, IPv6 addresses, else the MACs (so
/// one flow keeps to one receive queue and its order).
fn flow_hash(f: &[u8]) -> u32 {
    let key = match f.get(12..14) {
        Some([0x08, 0x00]) => f.get(26..38).or_else(|| f.get(26..34)),
        Some([0x86, 0xdd]) => f.get(22..54),
        _ => None,
    }
    .or_else(|| f.get(..12))
    .unwrap_or(&[]);
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Order the used-ring writes before reading the driver's event index (the full barrier
/// virtio's "suppression" needs between publishing and checking).
fn fence_acquire() {
    std::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Driver;
    use crate::msg::code;

    fn running(features: u64) -> (NetDevice, Driver) {
        let d = Driver::new(4 << 20, 256).unwrap();
        let mut dev = NetDevice::new();
        for (h, r) in d.setup(features).unwrap() {
            let out = dev.handle(&h, r);
            assert!(out.reply.is_none());
        }
        assert!(dev.link_up(), "both rings run after setup");
        (dev, d)
    }

    #[test]
    fn transmit_chains_become_frames_and_bad_ones_are_counted() {
        let (mut dev, mut d) = running(FEATURES);
        let frame: Vec<u8> = (0..1514u32).map(|i| i as u8).collect();
        let mut hdr = [0u8; 12];
        hdr[0] = VirtioNetHdr::NEEDS_CSUM;
        hdr[6] = 34;
        hdr[8] = 16;
        // Header and frame split over three descriptors.
        d.offer(
            TX,
            0,
            &[
                (&hdr[..], false),
                (&frame[..100], false),
                (&frame[100..], false),
            ],
        );
        let mut out = Vec::new();
        let off = dev.tx_pop(&mut out).expect("a frame");
        assert_eq!(out, frame);
        assert_eq!(off.map(|h| (h.flags, h.csum_start)), Some((1, 34)));
        let _ = dev.notify();
        assert_eq!(d.take_used(TX), vec![(0, 0)]);
        assert!(dev.tx_pop(&mut out).is_none());
        // A device-writable descriptor in a transmit chain; a runt; then a good frame.
        d.offer(TX, 3, &[(&hdr[..], false), (&frame[..], true)]);
        d.offer(TX, 5, &[(&hdr[..], false), (&frame[..10], false)]);
        d.offer(TX, 7, &[(&[0u8; 12][..], false), (&frame[..60], false)]);
        assert_eq!(dev.tx_pop(&mut out), Some(None));
        assert_eq!(out, &frame[..60]);
        assert_eq!((dev.bad_chains, dev.runts), (1, 1));
        let _ = dev.notify();
        assert_eq!(
            d.take_used(TX).len(),
            3,
            "every chain goes back to the guest"
        );
        // A descriptor pointing outside guest memory.
        d.offer(TX, 9, &[(&hdr[..], false), (&frame[..60], false)]);
        d.poke(
            crate::driver::RING_SPAN + 16 * 10,
            &(1u64 << 40).to_le_bytes(),
        );
        assert!(dev.tx_pop(&mut out).is_none());
        assert_eq!(dev.bad_chains, 2);
    }

    #[test]
    fn receive_spreads_a_frame_over_mergeable_buffers() {
        let (mut dev, mut d) = running(FEATURES);
        let frame: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(dev.rx_push(&frame, None), RxPush::NoBuffers);
        for i in 0..3u16 {
            d.offer(RX, i, &[(&[0u8; 1000][..], true)]);
        }
        assert_eq!(dev.rx_push(&frame, None), RxPush::Taken);
        let used = d.take_used(RX);
        assert_eq!(used, vec![(0, 1000), (1, 1000), (2, 512)]);
        let mut got = Vec::new();
        for (head, len) in used {
            got.extend(d.read_desc(RX, head as u16, len as usize));
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(&got[12..], &frame[..]);
        // Without mergeable buffers a chain too small for the frame goes back unused.
        let (mut dev, mut d) = running(FEATURES & !MRG_RXBUF);
        d.offer(RX, 0, &[(&[0u8; 1000][..], true)]);
        assert_eq!(dev.rx_push(&frame, None), RxPush::Dropped);
        assert_eq!(d.take_used(RX), vec![(0, 0)]);
        // A read-only descriptor in a receive chain is a bad chain.
        d.offer(RX, 1, &[(&[0u8; 4000][..], false)]);
        assert_eq!(dev.rx_push(&frame, None), RxPush::Dropped);
        assert_eq!(dev.bad_chains, 1);
    }

    #[test]
    fn frames_over_the_vmms_mtu_are_dropped() {
        let (mut dev, mut d) = running(FEATURES);
        let h = crate::driver::header(code::NET_SET_MTU);
        dev.handle(&h, Request::NetSetMtu(67));
        assert_eq!(dev.mtu(), None, "below IPv4's minimum: refused");
        dev.handle(&h, Request::NetSetMtu(1400));
        assert_eq!(dev.mtu(), Some(1400));
        for i in 0..2u16 {
            d.offer(RX, i, &[(&[0u8; 2048][..], true)]);
        }
        // The MTU plus an Ethernet header and a VLAN tag passes, a byte more does not.
        assert_eq!(dev.rx_push(&[0u8; 1419], None), RxPush::OverMtu);
        assert_eq!(dev.rx_push(&[0u8; 1418], None), RxPush::Taken);
        // A segmentation-offload frame is the guest's to take (it negotiated GUEST_TSO).
        let tso = VirtioNetHdr {
            flags: VirtioNetHdr::NEEDS_CSUM,
            gso_type: VirtioNetHdr::GSO_TCPV4,
            gso_size: 1348,
            ..Default::default()
        };
        assert_eq!(dev.rx_push(&[0u8; 1600], Some(tso)), RxPush::Taken);
        // A new front-end sets its own.
        dev.reset();
        assert_eq!(dev.mtu(), None);
    }

    #[test]
    fn several_queue_pairs_share_the_work() {
        let mut d = Driver::new(8 << 20, 64).unwrap();
        let mut dev = NetDevice::new();
        for (h, r) in d.setup_pairs(FEATURES, 2).unwrap() {
            dev.handle(&h, r);
        }
        assert!(dev.running(2) && dev.running(3) && !dev.running(4));
        // Transmit: both pairs' queues are drained, in turn.
        let f = |tag: u8| {
            let mut f = vec![0u8; 60];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[26] = tag;
            f
        };
        let hdr = [0u8; 12];
        for i in 0..3u16 {
            d.offer(TX, 2 * i, &[(&hdr[..], false), (&f(1)[..], false)]);
            d.offer(3, 2 * i, &[(&hdr[..], false), (&f(2)[..], false)]);
        }
        let mut tags = Vec::new();
        let mut out = Vec::new();
        while dev.tx_pop(&mut out).is_some() {
            tags.push(out[26]);
        }
        assert_eq!(tags, vec![1, 2, 1, 2, 1, 2], "round robin over the pairs");
        // Receive: flows spread over the running receive queues, each flow to one.
        for i in 0..32u16 {
            d.offer(RX, i, &[(&[0u8; 2048][..], true)]);
            d.offer(2, i, &[(&[0u8; 2048][..], true)]);
        }
        for tag in 0..16u8 {
            for _ in 0..2 {
                assert_eq!(dev.rx_push(&f(tag), None), RxPush::Taken);
            }
        }
        let (q0, q2) = (d.take_used(RX).len(), d.take_used(2).len());
        assert_eq!(q0 + q2, 32);
        assert!(q0 > 0 && q2 > 0, "both queues used: {q0} and {q2}");
        assert!(
            q0 % 2 == 0 && q2 % 2 == 0,
            "a flow's frames go to one queue"
        );
    }

    #[test]
    fn messages_are_answered_and_bad_ones_refused() {
        let mut dev = NetDevice::new();
        let h = crate::driver::header(code::GET_FEATURES);
        let r = dev.handle(&h, Request::GetFeatures).reply.unwrap();
        assert_eq!(r.len(), 20);
        assert_eq!(u64::from_le_bytes(r[12..].try_into().unwrap()), FEATURES);
        // REPLY_ACK: a refused request says so.
        let h = crate::driver::header(code::SET_PROTOCOL_FEATURES);
        dev.handle(&h, Request::SetProtocolFeatures(protocol::REPLY_ACK));
        let mut h = crate::driver::header(code::SET_VRING_NUM);
        h.flags |= msg::FLAG_NEED_REPLY;
        let r = dev
            .handle(&h, Request::SetVringNum { index: 0, num: 3 })
            .reply
            .unwrap();
        assert_eq!(u64::from_le_bytes(r[12..].try_into().unwrap()), 1);
        let r = dev
            .handle(
                &h,
                Request::SetVringNum {
                    index: QUEUES as u32,
                    num: 256,
                },
            )
            .reply
            .unwrap();
        assert_eq!(u64::from_le_bytes(r[12..].try_into().unwrap()), 1);
        let r = dev
            .handle(&h, Request::SetVringNum { index: 0, num: 256 })
            .reply
            .unwrap();
        assert_eq!(u64::from_le_bytes(r[12..].try_into().unwrap()), 0);
        let h = crate::driver::header(code::SET_FEATURES);
        dev.handle(&h, Request::SetFeatures(CTRL_VQ));
        assert_eq!(dev.features(), 0, "a feature never offered is refused");
    }
}
