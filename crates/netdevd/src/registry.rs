//! The registry of backends and the frame pump. It owns the core ([`Net`]: clients, hubs,
//! peers) and the backends behind netdev clients, each in a slot whose reactor tokens are
//! laid out by [`crate::tokens`]; it routes readiness to the backend it belongs to, moves
//! frames from backends into the core and lets them write what the core gave them, and runs
//! their timers. Drivers (`crate::drivers`) add backends through [`Registry::add_backend`];
//! the registry knows no driver.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use netdevd_backends::SharedBackend;
use netdevd_backends::{Backend, BackendEndpoint, BackendError, Reactor, Ready, Registration};
use netdevd_core::net::{ClientId, Net, NetError, NewClient, Role};
use netdevd_qmp::{ErrorClass, QmpError};
use serde_json::{json, Value};

use crate::tokens;

/// Frames one backend may hand the core per loop turn, so one busy source cannot starve
/// the others.
pub const PUMP_BUDGET: usize = 64;

struct BackendSlot {
    id: ClientId,
    name: String,
    gen: u8,
    backend: SharedBackend,
}

/// The core and the backends.
pub struct Registry {
    pub net: Net,
    pub reactor: Rc<Reactor>,
    backends: Vec<Option<BackendSlot>>,
    backend_gen: u8,
    /// The frame buffer every backend reads into (reused: no allocation per frame).
    scratch: netdevd_core::frame::Frame,
    /// A transmit drained during the current pump pass.
    drained: bool,
}

/// QMP's view of a core error.
pub fn net_error(e: NetError) -> QmpError {
    let class = match e {
        NetError::NotFound(_) => ErrorClass::DeviceNotFound,
        _ => ErrorClass::GenericError,
    };
    QmpError {
        class,
        desc: e.to_string(),
    }
}

impl Registry {
    pub fn new(reactor: Rc<Reactor>) -> Self {
        Registry {
            net: Net::new(),
            reactor,
            backends: Vec::new(),
            backend_gen: 0,
            scratch: netdevd_core::frame::Frame::new(Vec::with_capacity(
                netdevd_core::frame::MAX_FRAME,
            )),
            drained: false,
        }
    }

    /// Create a backend client named `name` of model `model`: `make` builds the backend on
    /// the registration (its tokens) the registry gives it. Nothing is left behind when
    /// either fails.
    pub fn add_backend<B: Backend + 'static>(
        &mut self,
        name: &str,
        model: &'static str,
        make: impl FnOnce(Registration) -> Result<B, BackendError>,
    ) -> Result<(), QmpError> {
        self.add_client(name, model, true, None, make, Role::Backend)
    }

    /// Create a NIC named `name` (not a netdev: `peer` names the netdev it is attached to,
    /// if any) with filter state `nic`; `make` builds its host side (the transport to the
    /// VMM) on the registration the registry gives it. Nothing is left behind on failure.
    pub fn add_nic<B: Backend + 'static>(
        &mut self,
        name: &str,
        model: &'static str,
        nic: netdevd_core::nic::Nic,
        peer: Option<&str>,
        make: impl FnOnce(Registration) -> Result<B, BackendError>,
    ) -> Result<(), QmpError> {
        self.add_client(name, model, false, peer, make, |guest| Role::Nic {
            nic: Box::new(nic),
            guest,
        })
    }

    /// A client whose endpoint is a backend in a slot of its own (a netdev, or a NIC peered
    /// with `peer`); `role` wraps the endpoint.
    fn add_client<B: Backend + 'static>(
        &mut self,
        name: &str,
        model: &'static str,
        is_netdev: bool,
        peer: Option<&str>,
        make: impl FnOnce(Registration) -> Result<B, BackendError>,
        role: impl FnOnce(Box<dyn netdevd_core::net::Endpoint>) -> Role,
    ) -> Result<(), QmpError> {
        self.net
            .check_new(name, is_netdev, peer)
            .map_err(net_error)?;
        let (idx, gen, reg) = self.next_slot();
        let backend: SharedBackend = Rc::new(RefCell::new(
            make(reg).map_err(|e| QmpError::generic(e.to_string()))?,
        ));
        let id = self
            .net
            .add(NewClient {
                name: name.to_string(),
                model,
                role: role(Box::new(BackendEndpoint(backend.clone()))),
                is_netdev,
                peer: peer.map(str::to_owned),
            })
            .map_err(net_error)?;
        self.install(idx, gen, id, name, backend);
        Ok(())
    }

    /// The next free slot, its generation and its registration.
    fn next_slot(&mut self) -> (usize, u8, Registration) {
        let idx = self
            .backends
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.backends.len());
        self.backend_gen = self.backend_gen.wrapping_add(1);
        let gen = self.backend_gen;
        (
            idx,
            gen,
            Registration::new(self.reactor.clone(), tokens::backend(idx, gen)),
        )
    }

    fn install(&mut self, idx: usize, gen: u8, id: ClientId, name: &str, backend: SharedBackend) {
        // A connection-oriented backend starts link-down until its peer is there.
        let ev = backend.borrow_mut().take_events();
        self.net.set_client_link(id, ev.link.unwrap_or(false));
        tracing::info!(netdev = name, "{}", backend.borrow().info());
        let slot = BackendSlot {
            id,
            name: name.to_string(),
            gen,
            backend,
        };
        if idx == self.backends.len() {
            self.backends.push(Some(slot));
        } else {
            self.backends[idx] = Some(slot);
        }
    }

    /// `netdev_del`: the client (all its queues) and the backends behind it.
    pub fn netdev_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.net.remove_netdev(id).map_err(net_error)?;
        self.drop_dead_slots();
        Ok(())
    }

    /// `device_del`: the NIC and its transport.
    pub fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.net.remove_nic(id).map_err(net_error)?;
        self.drop_dead_slots();
        Ok(())
    }

    /// Free the slots whose client the core no longer has (a netdev and a NIC may share a
    /// name, so slots go by client, not by name).
    fn drop_dead_slots(&mut self) {
        for slot in self.backends.iter_mut() {
            if slot.as_ref().is_some_and(|b| !self.net.exists(b.id)) {
                *slot = None;
            }
        }
    }

    /// The drops by reason of the backends behind client `name`, added up over its queues.
    pub fn backend_drops(&self, name: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        for b in self.backends.iter().flatten().filter(|b| b.name == name) {
            for (why, n) in b.backend.borrow().drops() {
                let e = m.entry(why).or_insert(json!(0));
                *e = json!(e.as_u64().unwrap_or(0) + n);
            }
        }
        m
    }

    /// Where the listening backend `name` can be reached.
    pub fn listen_addr(&self, name: &str) -> Option<String> {
        self.backends
            .iter()
            .flatten()
            .find(|b| b.name == name)
            .and_then(|b| b.backend.borrow().listen_addr())
    }

    /// Readiness for a backend token.
    pub fn backend_ready(&mut self, token: u64, r: Ready) {
        let (idx, gen, sub) = tokens::backend_parts(token);
        let Some(Some(slot)) = self.backends.get(idx) else {
            return;
        };
        if slot.gen != gen {
            return;
        }
        slot.backend.borrow_mut().ready(sub, r);
        // Frames move in the loop's pump that follows every wait.
    }

    /// Move frames from every backend into the core while the core can take them, then let
    /// every backend write what it buffered. A transmit that drains can unblock a reader
    /// that was paused earlier in the same pass, so passes repeat while anything drained.
    /// Returns true if the loop must come back at once (a backend still has frames ready).
    pub fn pump_all(&mut self) -> bool {
        for _ in 0..4 {
            self.drained = false;
            let mut more = false;
            // Every backend's link changes first: a frame pumped from one backend must find
            // the link another reported in this same turn (a NIC whose rings just came up).
            for idx in 0..self.backends.len() {
                if let Some(Some(slot)) = self.backends.get(idx) {
                    let (id, b) = (slot.id, slot.backend.clone());
                    self.apply_events(id, &b);
                }
            }
            for idx in 0..self.backends.len() {
                more |= self.pump(idx);
            }
            self.flush_all();
            // Frames a backend made while another was pumped (the user stack answering a
            // guest frame) wait inside it: pull them in another pass.
            let pending = self
                .backends
                .iter()
                .flatten()
                .any(|s| s.backend.borrow().has_pending() && self.net.can_send(s.id));
            if !self.drained && !pending {
                return more;
            }
        }
        true
    }

    /// Each backend writes its buffered frames and reports what happened.
    fn flush_all(&mut self) {
        for idx in 0..self.backends.len() {
            let Some(Some(slot)) = self.backends.get(idx) else {
                continue;
            };
            let (id, b) = (slot.id, slot.backend.clone());
            b.borrow_mut().flush();
            self.apply_events(id, &b);
        }
    }

    /// Apply a backend's link change; a drained transmit offers its queued frames again
    /// (and marks the pass, since a paused reader may now go on).
    fn apply_events(&mut self, id: ClientId, b: &SharedBackend) {
        let ev = b.borrow_mut().take_events();
        if let Some(up) = ev.link {
            self.net.set_client_link(id, up);
        }
        if ev.drained {
            self.net.flush(id);
            self.drained = true;
        }
    }

    fn pump(&mut self, idx: usize) -> bool {
        let Some(Some(slot)) = self.backends.get(idx) else {
            return false;
        };
        let (id, b) = (slot.id, slot.backend.clone());
        self.apply_events(id, &b);
        let mut sent = 0;
        let more = loop {
            if !self.net.can_send(id) {
                b.borrow_mut().set_paused(true);
                break false;
            }
            b.borrow_mut().set_paused(false);
            if sent == PUMP_BUDGET {
                break true;
            }
            // The borrow ends with this statement: the core may call back into `b`.
            let got = b.borrow_mut().poll_frame(&mut self.scratch);
            if !got {
                break false;
            }
            self.net.send(id, &self.scratch);
            sent += 1;
        };
        self.apply_events(id, &b);
        more
    }

    /// Run the backend timers that are due.
    pub fn run_timers(&mut self, now: Instant) {
        for slot in self.backends.iter().flatten() {
            let b = slot.backend.clone();
            let due = b.borrow().next_deadline().is_some_and(|t| t <= now);
            if due {
                b.borrow_mut().timers(now);
            }
        }
    }

    /// When a backend's timer runs out next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.backends
            .iter()
            .flatten()
            .filter_map(|s| s.backend.borrow().next_deadline())
            .min()
    }
}
