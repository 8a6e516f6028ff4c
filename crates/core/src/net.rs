//! The client registry and frame delivery: QEMU 7.2's `net/net.c` and `net/queue.c`
//! (`qemu_send_packet_async`, `qemu_deliver_packet_iov`, `qemu_flush_queued_packets`,
//! `qmp_set_link`, `qmp_netdev_del`) and `net/hub.c`, redone with bounded queues.
//!
//! # Delivery
//! A frame sent by a client goes to its peer. A link-down sender or receiver, or a client
//! without a peer, drops it (reported as sent, as in QEMU). A receiver answers
//! [`Rx::Taken`], [`Rx::Dropped`] or [`Rx::Busy`]; on busy the frame waits in the
//! receiver's queue, the receiver stops being offered frames, and the sender is told
//! [`Sent::Queued`]: it must stop reading its own source until [`Endpoint::resume`] is
//! called, which happens when the receiver calls [`Net::flush`] and its queue drains.
//!
//! # Limits
//! Every queue holds at most [`QUEUE_CAP`] frames (QEMU: 10 000, and unbounded for senders
//! with callbacks); past that frames are dropped and counted. Frames flooded by a hub are
//! sent without flow control, as in QEMU; a reader that wants backpressure through a hub
//! asks [`Net::can_send`] before reading. Hubs joined into a loop cannot flood forever:
//! a frame crosses at most [`MAX_HUB_HOPS`] hubs.

use std::collections::{BTreeMap, VecDeque};

use crate::announce::rarp_frame;
use crate::frame::Frame;
use crate::nic::{Nic, RxControl, RxFilterInfo};

/// Frames one client's queue holds.
pub const QUEUE_CAP: usize = 256;
/// Hubs a frame may cross.
pub const MAX_HUB_HOPS: u32 = 8;

/// A client's handle: an index plus a generation, so a stale handle never reaches a new
/// client in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    idx: u32,
    gen: u32,
}

/// A receiver's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    Taken,
    /// Not taken now: queue it and stop offering until the receiver flushes.
    Busy,
    /// Refused for good (malformed, filtered); counted, not retried.
    Dropped,
}

/// What happened to a sent frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// Waiting in the peer's queue: stop reading until resumed.
    Queued,
    Dropped,
}

/// A backend or a NIC's guest side: what the core delivers to. Implementations own their
/// fds; the core never touches one.
pub trait Endpoint {
    /// Take a frame, or say busy.
    fn receive(&mut self, frame: &Frame) -> Rx;
    /// The link of this client changed (`set_link`, or its peer NIC went away).
    fn link_changed(&mut self, _up: bool) {}
    /// Frames this client sent that were queued have drained: read again.
    fn resume(&mut self) {}
    /// The client is being deleted: release what it holds (run down-scripts, close fds).
    fn close(&mut self) {}
    /// Whether frames with offload work left (partial checksum, GSO) may be given as they
    /// are; otherwise the core finishes them in software first.
    fn accepts_offloads(&self) -> bool {
        false
    }
}

/// An endpoint that takes and discards every frame.
#[derive(Debug, Default)]
pub struct Discard;

impl Endpoint for Discard {
    fn receive(&mut self, _frame: &Frame) -> Rx {
        Rx::Taken
    }
}

/// What kind of client this is.
pub enum Role {
    /// A port of hub `hub`.
    HubPort { hub: i32 },
    /// A NIC: its filter state and the guest side frames go to.
    Nic {
        nic: Box<Nic>,
        guest: Box<dyn Endpoint>,
    },
    /// A backend (tap, socket, user, ...).
    Backend(Box<dyn Endpoint>),
}

/// Counters of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub dropped: u64,
    /// The largest frame sent.
    pub tx_max_frame: usize,
    /// The largest frame delivered to it.
    pub rx_max_frame: usize,
    /// Frames sent with offload work left (partial checksum, GSO).
    pub tx_offloaded: u64,
}

struct Client {
    name: String,
    model: &'static str,
    role: Role,
    peer: Option<ClientId>,
    /// A NIC whose backend was deleted keeps this, as QEMU keeps a dangling peer: it is
    /// never re-attached and stays link-down.
    peer_deleted: bool,
    link_down: bool,
    receive_disabled: bool,
    is_netdev: bool,
    queue: VecDeque<(ClientId, Frame)>,
    /// Senders told [`Sent::Queued`] for frames in `queue`.
    blocked: Vec<ClientId>,
    counters: Counters,
}

impl Client {
    /// Hub ports pass frames on untouched (each destination decides); endpoints say.
    fn accepts_offloads(&self) -> bool {
        match &self.role {
            Role::HubPort { .. } => true,
            Role::Backend(e) => e.accepts_offloads(),
            Role::Nic { guest, .. } => guest.accepts_offloads(),
        }
    }
}

struct Slot {
    gen: u32,
    client: Option<Client>,
}

#[derive(Default)]
struct Hub {
    ports: Vec<ClientId>,
    next_port: u32,
}

/// Errors, with QEMU's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("Duplicate ID '{0}'")]
    Duplicate(String),
    /// QMP class DeviceNotFound.
    #[error("Device '{0}' not found")]
    NotFound(String),
    #[error("Device '{0}' is not a netdev")]
    NotANetdev(String),
    #[error("netdev '{0}' not found")]
    PeerNotFound(String),
    /// QEMU 7.2 aborts here; netdevd answers.
    #[error("netdev '{0}' is already in use")]
    PeerInUse(String),
    #[error("net client({0}) isn't a NIC")]
    NotANic(String),
    #[error("invalid net client name: {0}")]
    InvalidName(String),
}

/// How to create a client.
pub struct NewClient {
    pub name: String,
    /// QEMU's model string ("hub", "socket", "tap", "virtio-net-pci", ...).
    pub model: &'static str,
    pub role: Role,
    /// Made by `-netdev`/`netdev_add` (deletable with `netdev_del`).
    pub is_netdev: bool,
    /// Peer to attach to at creation (it must exist and be free).
    pub peer: Option<String>,
}

/// Every client of one daemon.
#[derive(Default)]
pub struct Net {
    slots: Vec<Slot>,
    free: Vec<u32>,
    hubs: BTreeMap<i32, Hub>,
}

impl Net {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, id: ClientId) -> Option<&Client> {
        let s = self.slots.get(id.idx as usize)?;
        if s.gen == id.gen {
            s.client.as_ref()
        } else {
            None
        }
    }

    fn get_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        let s = self.slots.get_mut(id.idx as usize)?;
        if s.gen == id.gen {
            s.client.as_mut()
        } else {
            None
        }
    }

    fn ids(&self) -> impl Iterator<Item = (ClientId, &Client)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.client.as_ref().map(|c| {
                (
                    ClientId {
                        idx: i as u32,
                        gen: s.gen,
                    },
                    c,
                )
            })
        })
    }

    /// The first non-NIC client with this name.
    pub fn find_netdev(&self, name: &str) -> Option<ClientId> {
        self.ids()
            .find(|(_, c)| c.name == name && !matches!(c.role, Role::Nic { .. }))
            .map(|(id, _)| id)
    }

    /// Every client with this name (all queues, NICs included).
    pub fn find_all(&self, name: &str) -> Vec<ClientId> {
        self.ids()
            .filter(|(_, c)| c.name == name)
            .map(|(id, _)| id)
            .collect()
    }

    /// Names and models of every client, in creation-slot order.
    pub fn list(&self) -> Vec<(String, &'static str, Option<String>, bool)> {
        self.ids()
            .map(|(_, c)| {
                let peer = c.peer.and_then(|p| self.get(p)).map(|p| p.name.clone());
                (c.name.clone(), c.model, peer, !c.link_down)
            })
            .collect()
    }

    pub fn counters(&self, id: ClientId) -> Option<Counters> {
        self.get(id).map(|c| c.counters)
    }

    /// Name, model, link and counters of every client.
    pub fn stats(&self) -> Vec<(String, &'static str, bool, Counters)> {
        self.ids()
            .map(|(_, c)| (c.name.clone(), c.model, !c.link_down, c.counters))
            .collect()
    }

    pub fn peer(&self, id: ClientId) -> Option<ClientId> {
        self.get(id).and_then(|c| c.peer)
    }

    pub fn is_link_up(&self, id: ClientId) -> bool {
        self.get(id).is_some_and(|c| !c.link_down)
    }

    /// Check that a client could be created: the id is free and the peer exists and is free.
    pub fn check_new(
        &self,
        name: &str,
        is_netdev: bool,
        peer: Option<&str>,
    ) -> Result<(), NetError> {
        if is_netdev && self.find_netdev(name).is_some() {
            return Err(NetError::Duplicate(name.to_string()));
        }
        if let Some(p) = peer {
            let pid = self
                .find_netdev(p)
                .ok_or_else(|| NetError::PeerNotFound(p.to_string()))?;
            if self
                .get(pid)
                .is_some_and(|c| c.peer.is_some() || c.peer_deleted)
            {
                return Err(NetError::PeerInUse(p.to_string()));
            }
        }
        Ok(())
    }

    /// Create a client. Nothing changes when it fails.
    pub fn add(&mut self, new: NewClient) -> Result<ClientId, NetError> {
        self.check_new(&new.name, new.is_netdev, new.peer.as_deref())?;
        let peer = new.peer.as_deref().and_then(|p| self.find_netdev(p));
        let hub = match new.role {
            Role::HubPort { hub } => Some(hub),
            _ => None,
        };
        let client = Client {
            name: new.name,
            model: new.model,
            role: new.role,
            peer,
            peer_deleted: false,
            link_down: false,
            receive_disabled: false,
            is_netdev: new.is_netdev,
            queue: VecDeque::new(),
            blocked: Vec::new(),
            counters: Counters::default(),
        };
        let id = match self.free.pop() {
            Some(idx) => {
                let slot = &mut self.slots[idx as usize];
                slot.client = Some(client);
                ClientId { idx, gen: slot.gen }
            }
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    client: Some(client),
                });
                ClientId {
                    idx: self.slots.len() as u32 - 1,
                    gen: 0,
                }
            }
        };
        if let Some(p) = peer.and_then(|p| self.get_mut(p)) {
            p.peer = Some(id);
        }
        if let Some(h) = hub {
            let hub = self.hubs.entry(h).or_default();
            hub.ports.push(id);
            hub.next_port += 1;
        }
        Ok(id)
    }

    /// Create a hub port on hub `hubid` (the hub is created on first use and kept).
    pub fn add_hubport(
        &mut self,
        name: &str,
        hubid: i32,
        peer: Option<&str>,
    ) -> Result<ClientId, NetError> {
        self.add(NewClient {
            name: name.to_string(),
            model: "hub",
            role: Role::HubPort { hub: hubid },
            is_netdev: true,
            peer: peer.map(str::to_owned),
        })
    }

    /// The ids of every hub that exists.
    pub fn hubs(&self) -> Vec<i32> {
        self.hubs.keys().copied().collect()
    }

    /// `netdev_del`: remove every non-NIC client named `name` (all queues).
    pub fn remove_netdev(&mut self, name: &str) -> Result<(), NetError> {
        let first = self
            .find_netdev(name)
            .ok_or_else(|| NetError::NotFound(name.to_string()))?;
        if !self.get(first).is_some_and(|c| c.is_netdev) {
            return Err(NetError::NotANetdev(name.to_string()));
        }
        let ids: Vec<ClientId> = self
            .find_all(name)
            .into_iter()
            .filter(|id| {
                !self
                    .get(*id)
                    .is_some_and(|c| matches!(c.role, Role::Nic { .. }))
            })
            .collect();
        for id in ids {
            self.remove(id);
        }
        Ok(())
    }

    /// `device_del`: remove the NIC named `name` (its peer netdev stays, unpeered).
    pub fn remove_nic(&mut self, name: &str) -> Result<(), NetError> {
        let ids: Vec<ClientId> = self
            .find_all(name)
            .into_iter()
            .filter(|id| {
                self.get(*id)
                    .is_some_and(|c| matches!(c.role, Role::Nic { .. }))
            })
            .collect();
        if ids.is_empty() {
            return Err(NetError::NotFound(name.to_string()));
        }
        for id in ids {
            self.remove(id);
        }
        Ok(())
    }

    /// The NICs there are.
    pub fn nic_count(&self) -> usize {
        self.ids()
            .filter(|(_, c)| matches!(c.role, Role::Nic { .. }))
            .count()
    }

    /// Whether client `id` still exists.
    pub fn exists(&self, id: ClientId) -> bool {
        self.get(id).is_some()
    }

    fn remove(&mut self, id: ClientId) {
        let Some(mut client) = self.slots[id.idx as usize].client.take() else {
            return;
        };
        let slot = &mut self.slots[id.idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(id.idx);
        if let Role::HubPort { hub } = client.role {
            if let Some(h) = self.hubs.get_mut(&hub) {
                h.ports.retain(|p| *p != id);
            }
        }
        // Frames waiting for the deleted client are dropped; their senders may read again.
        for s in client.blocked.drain(..) {
            self.resume(s);
        }
        if let Some(pid) = client.peer {
            let mut resume = false;
            if let Some(p) = self.get_mut(pid) {
                p.queue.retain(|(s, _)| *s != id);
                p.blocked.retain(|s| *s != id);
                p.peer = None;
                if let Role::Nic { guest, .. } = &mut p.role {
                    p.peer_deleted = true;
                    p.link_down = true;
                    guest.link_changed(false);
                }
                resume = p.queue.is_empty();
            }
            if resume {
                self.flush(pid);
            }
        }
        match &mut client.role {
            Role::Backend(e) => e.close(),
            Role::Nic { guest, .. } => guest.close(),
            Role::HubPort { .. } => {}
        }
    }

    /// `set_link`: every client named `name`; then, if the first one's peer is a NIC, the
    /// peers of all of them (QEMU's `qmp_set_link`).
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), NetError> {
        let ids = self.find_all(name);
        let Some(&first) = ids.first() else {
            return Err(NetError::NotFound(name.to_string()));
        };
        for &id in &ids {
            if let Some(c) = self.get_mut(id) {
                c.link_down = !up;
            }
        }
        if let Some(c) = self.get_mut(first) {
            match &mut c.role {
                Role::Backend(e) => e.link_changed(up),
                Role::Nic { guest, .. } => guest.link_changed(up),
                Role::HubPort { .. } => {}
            }
        }
        let first_peer_is_nic = self
            .get(first)
            .and_then(|c| c.peer)
            .and_then(|p| self.get(p))
            .is_some_and(|p| matches!(p.role, Role::Nic { .. }));
        if first_peer_is_nic {
            for id in ids {
                if let Some(pid) = self.get(id).and_then(|c| c.peer) {
                    if let Some(p) = self.get_mut(pid) {
                        p.link_down = !up;
                        if let Role::Nic { guest, .. } = &mut p.role {
                            guest.link_changed(up);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A backend's own view of its link (a connection came or went), as QEMU's socket
    /// backends set `link_down` themselves. Only this client changes; no callbacks run.
    pub fn set_client_link(&mut self, id: ClientId, up: bool) {
        if let Some(c) = self.get_mut(id) {
            c.link_down = !up;
        }
    }

    /// Send a frame from client `from` to its peer.
    pub fn send(&mut self, from: ClientId, frame: &Frame) -> Sent {
        let Some(c) = self.get_mut(from) else {
            return Sent::Dropped;
        };
        if c.link_down {
            c.counters.dropped += 1;
            return Sent::Dropped;
        }
        c.counters.tx_frames += 1;
        c.counters.tx_max_frame = c.counters.tx_max_frame.max(frame.data.len());
        if frame.offload.is_some_and(|h| h.needs_work()) {
            c.counters.tx_offloaded += 1;
        }
        let Some(peer) = c.peer else {
            return Sent::Dropped;
        };
        self.deliver(from, peer, frame, true, 0)
    }

    /// Whether a frame from `from` would be taken now (a reader asks before reading).
    pub fn can_send(&self, from: ClientId) -> bool {
        let Some(c) = self.get(from) else {
            return false;
        };
        let Some(p) = c.peer.and_then(|p| self.get(p)) else {
            return true;
        };
        if p.receive_disabled || !p.queue.is_empty() {
            return false;
        }
        match &p.role {
            // A hub port can receive if at least one other port's peer can.
            Role::HubPort { hub } => self.hubs.get(hub).is_none_or(|h| {
                h.ports.iter().any(|&q| {
                    q != c.peer.unwrap_or(q)
                        && self
                            .get(q)
                            .and_then(|qc| qc.peer)
                            .and_then(|qp| self.get(qp))
                            .is_some_and(|qp| !qp.receive_disabled && qp.queue.is_empty())
                })
            }),
            _ => true,
        }
    }

    /// Frames go by reference; only a frame that must wait in a queue is copied.
    fn deliver(
        &mut self,
        sender: ClientId,
        to: ClientId,
        frame: &Frame,
        flow: bool,
        hops: u32,
    ) -> Sent {
        let Some(r) = self.get_mut(to) else {
            return Sent::Dropped;
        };
        if r.link_down {
            r.counters.dropped += 1;
            return Sent::Dropped;
        }
        if frame.offload.is_some_and(|h| h.needs_work()) && !r.accepts_offloads() {
            return self.deliver_finished(sender, to, frame, flow, hops);
        }
        if r.receive_disabled || !r.queue.is_empty() {
            return self.enqueue(to, sender, frame, flow);
        }
        match self.offer(to, frame, hops) {
            Rx::Taken => Sent::Delivered,
            Rx::Dropped => Sent::Dropped,
            Rx::Busy => {
                if let Some(r) = self.get_mut(to) {
                    r.receive_disabled = true;
                }
                self.enqueue(to, sender, frame, flow)
            }
        }
    }

    /// Finish an offloaded frame in software (checksum, segmentation) for a receiver that
    /// cannot take it, and deliver the plain frames one by one.
    fn deliver_finished(
        &mut self,
        sender: ClientId,
        to: ClientId,
        frame: &Frame,
        flow: bool,
        hops: u32,
    ) -> Sent {
        let Some(hdr) = frame.offload else {
            return Sent::Dropped;
        };
        let mut plain = Vec::new();
        if netdevd_wire::gso::finish_frame(&frame.data, &hdr, &mut |f| {
            plain.push(Frame::new(f.to_vec()))
        })
        .is_err()
        {
            if let Some(r) = self.get_mut(to) {
                r.counters.dropped += 1;
            }
            return Sent::Dropped;
        }
        let mut result = Sent::Dropped;
        for f in &plain {
            match self.deliver(sender, to, f, flow, hops) {
                Sent::Queued => result = Sent::Queued,
                Sent::Delivered if result == Sent::Dropped => result = Sent::Delivered,
                _ => {}
            }
        }
        result
    }

    /// Hand a frame to a client's receive side.
    fn offer(&mut self, to: ClientId, frame: &Frame, hops: u32) -> Rx {
        let Some(r) = self.get_mut(to) else {
            return Rx::Dropped;
        };
        let rx = match &mut r.role {
            Role::HubPort { hub } => {
                let hub = *hub;
                r.counters.rx_frames += 1;
                self.flood(to, hub, frame, hops);
                return Rx::Taken;
            }
            Role::Backend(e) => e.receive(frame),
            Role::Nic { nic, guest } => {
                if nic.accepts(&frame.data) {
                    guest.receive(frame)
                } else {
                    Rx::Dropped
                }
            }
        };
        match rx {
            Rx::Taken => {
                r.counters.rx_frames += 1;
                r.counters.rx_max_frame = r.counters.rx_max_frame.max(frame.data.len());
            }
            Rx::Dropped => r.counters.dropped += 1,
            Rx::Busy => {}
        }
        rx
    }

    /// A hub sends what one port received out of every other port.
    fn flood(&mut self, in_port: ClientId, hub: i32, frame: &Frame, hops: u32) {
        if hops >= MAX_HUB_HOPS {
            return;
        }
        let ports: Vec<ClientId> = match self.hubs.get(&hub) {
            Some(h) => h.ports.iter().copied().filter(|p| *p != in_port).collect(),
            None => return,
        };
        for port in ports {
            let Some(pc) = self.get_mut(port) else {
                continue;
            };
            if pc.link_down {
                pc.counters.dropped += 1;
                continue;
            }
            pc.counters.tx_frames += 1;
            if let Some(peer) = pc.peer {
                self.deliver(port, peer, frame, false, hops + 1);
            }
        }
    }

    fn enqueue(&mut self, to: ClientId, sender: ClientId, frame: &Frame, flow: bool) -> Sent {
        let Some(r) = self.get_mut(to) else {
            return Sent::Dropped;
        };
        if r.queue.len() >= QUEUE_CAP {
            r.counters.dropped += 1;
            return Sent::Dropped;
        }
        r.queue.push_back((sender, frame.clone()));
        if flow {
            if !r.blocked.contains(&sender) {
                r.blocked.push(sender);
            }
            Sent::Queued
        } else {
            Sent::Delivered
        }
    }

    /// A receiver that answered busy can take frames again: deliver its queue in order
    /// (stopping at the next busy), then let blocked senders read again.
    pub fn flush(&mut self, id: ClientId) {
        let Some(r) = self.get_mut(id) else { return };
        r.receive_disabled = false;
        loop {
            let Some(r) = self.get_mut(id) else { return };
            let Some((sender, frame)) = r.queue.pop_front() else {
                break;
            };
            if self.offer(id, &frame, 0) == Rx::Busy {
                if let Some(r) = self.get_mut(id) {
                    r.queue.push_front((sender, frame));
                    r.receive_disabled = true;
                }
                return;
            }
        }
        let blocked = self
            .get_mut(id)
            .map(|r| std::mem::take(&mut r.blocked))
            .unwrap_or_default();
        for s in blocked {
            self.resume(s);
        }
    }

    fn resume(&mut self, id: ClientId) {
        if let Some(c) = self.get_mut(id) {
            match &mut c.role {
                Role::Backend(e) => e.resume(),
                Role::Nic { guest, .. } => guest.resume(),
                Role::HubPort { .. } => {}
            }
        }
    }

    /// `query-rx-filter`.
    pub fn rx_filters(&mut self, name: Option<&str>) -> Result<Vec<RxFilterInfo>, NetError> {
        match name {
            None => {
                let ids: Vec<ClientId> = self.ids().map(|(id, _)| id).collect();
                let mut seen = Vec::new();
                let mut out = Vec::new();
                for id in ids {
                    if let Some(c) = self.get_mut(id) {
                        // One entry per NIC (its first queue).
                        if let Role::Nic { nic, .. } = &mut c.role {
                            if !seen.contains(&c.name) {
                                seen.push(c.name.clone());
                                out.push(nic.query(&c.name));
                            }
                        }
                    }
                }
                Ok(out)
            }
            Some(n) => {
                let Some(&id) = self.find_all(n).first() else {
                    return Err(NetError::InvalidName(n.to_string()));
                };
                let c = self
                    .get_mut(id)
                    .ok_or_else(|| NetError::InvalidName(n.to_string()))?;
                match &mut c.role {
                    Role::Nic { nic, .. } => Ok(vec![nic.query(n)]),
                    _ => Err(NetError::NotANic(n.to_string())),
                }
            }
        }
    }

    /// A guest changed a NIC's filter. Returns `(name, path)` when NIC_RX_FILTER_CHANGED is due.
    pub fn nic_control(&mut self, id: ClientId, cmd: RxControl) -> Option<(String, String)> {
        let c = self.get_mut(id)?;
        match &mut c.role {
            Role::Nic { nic, .. } => nic.control(cmd).then(|| (c.name.clone(), nic.path.clone())),
            _ => None,
        }
    }

    /// One announce round: every selected NIC sends its RARP frame to its peer. Returns how
    /// many frames were sent.
    pub fn announce_round(&mut self, interfaces: Option<&[String]>) -> usize {
        let nics: Vec<(ClientId, crate::frame::MacAddr)> = self
            .ids()
            .filter_map(|(id, c)| match &c.role {
                Role::Nic { nic, .. } if interfaces.is_none_or(|l| l.contains(&c.name)) => {
                    Some((id, nic.conf_mac))
                }
                _ => None,
            })
            .collect();
        let mut n = 0;
        for (id, mac) in nics {
            if self.send(id, &Frame::new(rarp_frame(mac).to_vec())) != Sent::Dropped {
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MacAddr;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A fake backend: records frames, can be made busy, records resumes and link changes.
    #[derive(Default)]
    struct Fake {
        got: Vec<Vec<u8>>,
        busy: bool,
        resumed: u32,
        link: Vec<bool>,
        closed: bool,
    }

    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Fake>>);

    impl Endpoint for Shared {
        fn receive(&mut self, frame: &Frame) -> Rx {
            let mut f = self.0.borrow_mut();
            if f.busy {
                return Rx::Busy;
            }
            f.got.push(frame.data.clone());
            Rx::Taken
        }
        fn link_changed(&mut self, up: bool) {
            self.0.borrow_mut().link.push(up);
        }
        fn resume(&mut self) {
            self.0.borrow_mut().resumed += 1;
        }
        fn close(&mut self) {
            self.0.borrow_mut().closed = true;
        }
    }

    fn backend(net: &mut Net, name: &str) -> (ClientId, Shared) {
        let s = Shared::default();
        let id = net
            .add(NewClient {
                name: name.into(),
                model: "fake",
                role: Role::Backend(Box::new(s.clone())),
                is_netdev: true,
                peer: None,
            })
            .unwrap();
        (id, s)
    }

    fn frame(b: u8) -> Frame {
        Frame::new(vec![b; 60])
    }

    #[test]
    fn hub_floods_to_every_other_port() {
        let mut net = Net::new();
        let (a, sa) = backend(&mut net, "a");
        let (_b, sb) = backend(&mut net, "b");
        let (_c, sc) = backend(&mut net, "c");
        for (p, n) in [("pa", "a"), ("pb", "b"), ("pc", "c")] {
            net.add_hubport(p, 0, Some(n)).unwrap();
        }
        assert_eq!(net.send(a, &frame(1)), Sent::Delivered);
        assert!(sa.0.borrow().got.is_empty());
        assert_eq!(sb.0.borrow().got.len(), 1);
        assert_eq!(sc.0.borrow().got.len(), 1);
        // A port on another hub hears nothing.
        let (_d, sd) = backend(&mut net, "d");
        net.add_hubport("pd", 1, Some("d")).unwrap();
        net.send(a, &frame(2));
        assert!(sd.0.borrow().got.is_empty());
        assert_eq!(net.hubs(), [0, 1]);
    }

    #[test]
    fn ids_and_peers_are_checked() {
        let mut net = Net::new();
        backend(&mut net, "a");
        assert_eq!(
            net.add_hubport("a", 0, None).unwrap_err(),
            NetError::Duplicate("a".into())
        );
        assert_eq!(
            net.add_hubport("h", 0, Some("zz")).unwrap_err(),
            NetError::PeerNotFound("zz".into())
        );
        net.add_hubport("h", 0, Some("a")).unwrap();
        assert_eq!(
            net.add_hubport("h2", 0, Some("a")).unwrap_err(),
            NetError::PeerInUse("a".into())
        );
        // Failed adds changed nothing.
        assert!(net.find_netdev("h2").is_none());
        assert_eq!(
            net.remove_netdev("zz").unwrap_err(),
            NetError::NotFound("zz".into())
        );
        net.remove_netdev("h").unwrap();
        assert_eq!(
            net.remove_netdev("h").unwrap_err(),
            NetError::NotFound("h".into())
        );
        // The id is reusable and the peer is free again.
        net.add_hubport("h", 5, Some("a")).unwrap();
    }

    #[test]
    fn busy_port_behind_a_hub_queues_and_blocks_reading() {
        let mut net = Net::new();
        let (b, _) = backend(&mut net, "b");
        let (c, sc) = backend(&mut net, "c");
        net.add_hubport("pb", 1, Some("b")).unwrap();
        net.add_hubport("pc", 1, Some("c")).unwrap();
        sc.0.borrow_mut().busy = true;
        // Hubs flood without flow control: the frame waits at c, the hub took it.
        assert_eq!(net.send(b, &frame(1)), Sent::Delivered);
        assert!(!net.can_send(b), "no port of the hub can take more");
        sc.0.borrow_mut().busy = false;
        net.flush(c);
        assert_eq!(sc.0.borrow().got.len(), 1);
        assert!(net.can_send(b));
    }

    #[test]
    fn direct_peer_backpressure() {
        let mut net = Net::new();
        let (a, sa) = backend(&mut net, "a");
        let sb = Shared::default();
        let b = net
            .add(NewClient {
                name: "b".into(),
                model: "fake",
                role: Role::Backend(Box::new(sb.clone())),
                is_netdev: true,
                peer: Some("a".into()),
            })
            .unwrap();
        sb.0.borrow_mut().busy = true;
        assert_eq!(net.send(a, &frame(1)), Sent::Queued);
        assert_eq!(net.send(a, &frame(2)), Sent::Queued);
        assert!(!net.can_send(a));
        for _ in 0..QUEUE_CAP {
            net.send(a, &frame(3));
        }
        assert_eq!(net.send(a, &frame(4)), Sent::Dropped, "queues are bounded");
        sb.0.borrow_mut().busy = false;
        net.flush(b);
        let got = &sb.0.borrow().got;
        assert_eq!(got.len(), QUEUE_CAP);
        assert_eq!(got[0][0], 1);
        assert_eq!(got[1][0], 2);
        assert_eq!(sa.0.borrow().resumed, 1);
    }

    #[test]
    fn link_down_drops_both_ways() {
        let mut net = Net::new();
        let (a, sa) = backend(&mut net, "a");
        let (b, sb) = backend(&mut net, "b");
        net.add_hubport("pa", 0, Some("a")).unwrap();
        net.add_hubport("pb", 0, Some("b")).unwrap();
        net.set_link("a", false).unwrap();
        assert_eq!(sa.0.borrow().link, [false]);
        assert_eq!(net.send(a, &frame(1)), Sent::Dropped);
        net.send(b, &frame(2));
        assert!(sa.0.borrow().got.is_empty());
        net.set_link("a", true).unwrap();
        net.send(a, &frame(3));
        assert_eq!(sb.0.borrow().got.len(), 1);
        // Downing a hub port stops what leaves through it.
        net.set_link("pb", false).unwrap();
        net.send(a, &frame(4));
        assert_eq!(sb.0.borrow().got.len(), 1);
        assert_eq!(
            net.set_link("zz", true).unwrap_err(),
            NetError::NotFound("zz".into())
        );
    }

    #[test]
    fn deleting_a_netdev_purges_and_closes() {
        let mut net = Net::new();
        let (a, sa) = backend(&mut net, "a");
        let sb = Shared::default();
        net.add(NewClient {
            name: "b".into(),
            model: "fake",
            role: Role::Backend(Box::new(sb.clone())),
            is_netdev: true,
            peer: Some("a".into()),
        })
        .unwrap();
        sb.0.borrow_mut().busy = true;
        assert_eq!(net.send(a, &frame(1)), Sent::Queued);
        net.remove_netdev("b").unwrap();
        assert!(sb.0.borrow().closed);
        assert_eq!(
            sa.0.borrow().resumed,
            1,
            "the blocked sender may read again"
        );
        assert_eq!(net.peer(a), None);
    }

    #[test]
    fn nic_rx_filter_link_and_announce() {
        let mut net = Net::new();
        let (_a, sa) = backend(&mut net, "a");
        let guest = Shared::default();
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let nic = net
            .add(NewClient {
                name: "nic0".into(),
                model: "virtio-net",
                role: Role::Nic {
                    nic: Box::new(Nic::new(
                        mac,
                        "/machine/peripheral/nic0/virtio-backend".into(),
                    )),
                    guest: Box::new(guest.clone()),
                },
                is_netdev: false,
                peer: Some("a".into()),
            })
            .unwrap();
        assert_eq!(net.rx_filters(None).unwrap().len(), 1);
        assert_eq!(
            net.rx_filters(Some("a")).unwrap_err(),
            NetError::NotANic("a".into())
        );
        assert_eq!(
            net.rx_filters(Some("q")).unwrap_err(),
            NetError::InvalidName("q".into())
        );
        assert_eq!(net.announce_round(None), 1);
        assert_eq!(sa.0.borrow().got[0][12..14], [0x80, 0x35]);
        assert_eq!(net.announce_round(Some(&[])), 0);
        assert_eq!(net.announce_round(Some(&["nic0".to_string()])), 1);
        // set_link on the backend also downs the peer NIC.
        net.set_link("a", false).unwrap();
        assert_eq!(guest.0.borrow().link, [false]);
        assert!(!net.is_link_up(nic));
        net.set_link("a", true).unwrap();
        // Deleting the backend leaves the NIC down for good.
        net.remove_netdev("a").unwrap();
        assert!(!net.is_link_up(nic));
        assert_eq!(
            net.nic_control(nic, RxControl::Promisc(false)).unwrap().0,
            "nic0"
        );
        assert!(net.nic_control(nic, RxControl::Promisc(false)).is_none());
        // A NIC's name is not a netdev.
        assert_eq!(
            net.remove_netdev("nic0").unwrap_err(),
            NetError::NotFound("nic0".into())
        );
    }

    #[test]
    fn hub_loops_are_cut() {
        let mut net = Net::new();
        let (a, _) = backend(&mut net, "a");
        let (_b, sb) = backend(&mut net, "b");
        net.add_hubport("pa", 0, Some("a")).unwrap();
        net.add_hubport("x0", 0, None).unwrap();
        net.add_hubport("y0", 0, None).unwrap();
        net.add_hubport("x1", 1, Some("x0")).unwrap();
        net.add_hubport("y1", 1, Some("y0")).unwrap();
        net.add_hubport("pb", 1, Some("b")).unwrap();
        net.send(a, &frame(1));
        // Two paths between the hubs make a loop; the frame still arrives, finitely often.
        let n = sb.0.borrow().got.len();
        assert!((1..1000).contains(&n), "{n}");
    }
}
