//! The daemon's state and what each QMP command does to it. Runs on the event loop's
//! thread; a command sees a consistent registry and needs no locks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use netdevd_backends::dgram::{DgramBackend, DgramConfig};
use netdevd_backends::stream::{StreamBackend, StreamConfig};
use netdevd_backends::tap::{TapBackend, TapConfig};
use netdevd_backends::{BackendEndpoint, Reactor, Ready, Registration, SharedBackend};
use netdevd_core::announce::{AnnounceParams, Announcer};
use netdevd_core::net::{ClientId, Net, NewClient, Role};
use netdevd_core::nic;
use netdevd_qapi::schema::{CommandDef, Ty};
use netdevd_qapi::{parse_as, AnnounceParameters, Netdev, NETDEV};
use netdevd_qmp::{QmpError, ServerInfo};
use serde_json::{json, Value};

use crate::drivers::{net_error, netdev_add};

/// The fds one QMP connection holds (QEMU's per-monitor fd list).
#[derive(Default)]
pub struct Monitor {
    /// Fds that came with the latest message that carried any, not yet taken by `getfd`.
    pub pending: Vec<OwnedFd>,
    /// Fds kept by `getfd`, by name.
    pub named: BTreeMap<String, OwnedFd>,
}

/// Resolves `fd=` option values: a number is an fd inherited at start-up, anything else a
/// name kept by the calling monitor's `getfd` (QEMU's `monitor_fd_param`).
pub trait FdSource {
    /// Check that the value names an fd, without taking it.
    fn check_fd(&mut self, param: &str) -> Result<(), QmpError>;
    /// Take the fd (a named one leaves the monitor's table).
    fn take_fd(&mut self, param: &str) -> Result<OwnedFd, QmpError>;
}

fn fd_number(param: &str) -> Option<Result<i32, QmpError>> {
    if !param.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(
        param
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| QmpError::generic(format!("Invalid file descriptor number '{param}'"))),
    )
}

fn inherited(n: i32) -> Result<(), QmpError> {
    if netdevd_sys::inherited_fd_available(n) {
        Ok(())
    } else {
        Err(QmpError::generic(format!(
            "Invalid file descriptor number '{n}'"
        )))
    }
}

impl FdSource for Option<&mut Monitor> {
    fn check_fd(&mut self, param: &str) -> Result<(), QmpError> {
        if let Some(n) = fd_number(param) {
            return inherited(n?);
        }
        match self {
            Some(m) if m.named.contains_key(param) => Ok(()),
            _ => Err(QmpError::generic(format!(
                "File descriptor named '{param}' has not been found"
            ))),
        }
    }

    fn take_fd(&mut self, param: &str) -> Result<OwnedFd, QmpError> {
        if let Some(n) = fd_number(param) {
            let n = n?;
            return netdevd_sys::claim_inherited_fd(n)
                .map_err(|_| QmpError::generic(format!("Invalid file descriptor number '{n}'")));
        }
        self.as_mut()
            .and_then(|m| m.named.remove(param))
            .ok_or_else(|| {
                QmpError::generic(format!(
                    "File descriptor named '{param}' has not been found"
                ))
            })
    }
}

/// Token kinds on the reactor (top byte of a token).
pub const KIND_BACKEND: u64 = 4 << 56;
/// Frames one backend may hand the core per loop turn, so one busy source cannot starve
/// the others.
pub const PUMP_BUDGET: usize = 64;

/// A backend to create.
pub enum BackendKind {
    Stream(StreamConfig),
    Dgram(DgramConfig),
    Tap(TapConfig),
    User(Box<netdevd_usernet::Config>),
}

struct BackendSlot {
    id: ClientId,
    name: String,
    gen: u8,
    backend: SharedBackend,
}

/// Everything the daemon serves.
pub struct State {
    pub net: Net,
    pub reactor: Rc<Reactor>,
    /// Where the user netdev finds its upstream resolvers (`--resolv-conf`).
    pub resolv_conf: std::path::PathBuf,
    backends: Vec<Option<BackendSlot>>,
    backend_gen: u8,
    /// The frame buffer every backend reads into (reused: no allocation per frame).
    scratch: netdevd_core::frame::Frame,
    /// A transmit drained during the current pump pass.
    drained: bool,
    pub announcer: Announcer,
    pub info: ServerInfo,
    /// Set by `quit`: the loop answers, flushes and exits.
    pub quit: bool,
    /// Events to send to every negotiated session: (name, data).
    pub events: Vec<(String, Option<Value>)>,
}

impl State {
    pub fn new(reactor: Rc<Reactor>) -> Self {
        State {
            net: Net::new(),
            reactor,
            resolv_conf: std::path::PathBuf::from("/etc/resolv.conf"),
            backends: Vec::new(),
            backend_gen: 0,
            scratch: netdevd_core::frame::Frame::new(Vec::with_capacity(
                netdevd_core::frame::MAX_FRAME,
            )),
            drained: false,
            announcer: Announcer::default(),
            info: ServerInfo {
                qemu: (7, 2, 0),
                package: format!("netdevd {}", env!("CARGO_PKG_VERSION")),
            },
            quit: false,
            events: Vec::new(),
        }
    }

    /// Run a command whose arguments the QMP layer has checked.
    pub fn execute(
        &mut self,
        cmd: &'static CommandDef,
        args: Value,
        monitor: &mut Monitor,
        now: Instant,
    ) -> Result<Value, QmpError> {
        let s = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match cmd.name {
            "netdev_add" => {
                let nd: Netdev = parse_as(&args, &Ty::Union(&NETDEV))
                    .map_err(|e| QmpError::generic(e.to_string()))?;
                netdev_add(self, nd, &mut Some(monitor))?;
                Ok(json!({}))
            }
            "netdev_del" => {
                self.netdev_del(&s(&args, "id"))?;
                Ok(json!({}))
            }
            "set_link" => {
                let up = args.get("up").and_then(Value::as_bool).unwrap_or(true);
                self.net
                    .set_link(&s(&args, "name"), up)
                    .map_err(net_error)?;
                Ok(json!({}))
            }
            "query-rx-filter" => {
                let name = args.get("name").and_then(Value::as_str);
                let infos = self.net.rx_filters(name).map_err(net_error)?;
                Ok(Value::Array(infos.iter().map(rx_filter_json).collect()))
            }
            "announce-self" => {
                let p: AnnounceParameters =
                    parse_as(&args, &Ty::Struct(&netdevd_qapi::ANNOUNCE_PARAMETERS))
                        .map_err(|e| QmpError::generic(e.to_string()))?;
                self.announce(p, now);
                Ok(json!({}))
            }
            "query-version" => Ok(self.info.version_value()),
            "x-query-netdev-stats" => Ok(Value::Array(
                self.net
                    .stats()
                    .into_iter()
                    .map(|(name, model, up, c)| {
                        let drops = self.backend_drops(&name);
                        json!({"name": name, "model": model, "link-up": up, "rx-frames": c.rx_frames,
                               "tx-frames": c.tx_frames, "dropped": c.dropped,
                               "tx-max-frame": c.tx_max_frame, "rx-max-frame": c.rx_max_frame,
                               "tx-offloaded": c.tx_offloaded, "backend-drops": drops})
                    })
                    .collect(),
            )),
            "quit" => {
                self.quit = true;
                Ok(json!({}))
            }
            "getfd" => {
                let name = s(&args, "fdname");
                if monitor.pending.is_empty() {
                    return Err(QmpError::generic(
                        "No file descriptor supplied via SCM_RIGHTS",
                    ));
                }
                let mut pending = std::mem::take(&mut monitor.pending).into_iter();
                let fd = pending.next();
                // The others of the batch are closed here, as QEMU does.
                drop(pending);
                if name.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(QmpError::generic(
                        "Parameter 'fdname' expects a name not starting with a digit",
                    ));
                }
                if let Some(fd) = fd {
                    monitor.named.insert(name, fd);
                }
                Ok(json!({}))
            }
            "closefd" => {
                let name = s(&args, "fdname");
                match monitor.named.remove(&name) {
                    Some(_) => Ok(json!({})),
                    None => Err(QmpError::generic(format!(
                        "File descriptor named '{name}' not found"
                    ))),
                }
            }
            other => Err(QmpError::generic(format!(
                "The command {other} has not been found"
            ))),
        }
    }

    /// `netdev_del`: the client (all its queues) and the backends behind it.
    pub fn netdev_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.net.remove_netdev(id).map_err(net_error)?;
        for slot in self.backends.iter_mut() {
            if slot.as_ref().is_some_and(|b| b.name == id) {
                *slot = None;
            }
        }
        Ok(())
    }

    /// Create a backend client named `name`. Nothing is left behind when it fails.
    pub fn add_backend(
        &mut self,
        name: &str,
        model: &'static str,
        kind: BackendKind,
    ) -> Result<(), QmpError> {
        self.net.check_new(name, true, None).map_err(net_error)?;
        let idx = self
            .backends
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.backends.len());
        self.backend_gen = self.backend_gen.wrapping_add(1);
        let gen = self.backend_gen;
        let reg = Registration::new(
            self.reactor.clone(),
            KIND_BACKEND | ((idx as u64) << 40) | ((gen as u64) << 32),
        );
        let backend: SharedBackend = match kind {
            BackendKind::Stream(c) => Rc::new(RefCell::new(
                StreamBackend::new(reg, c).map_err(|e| QmpError::generic(e.to_string()))?,
            )),
            BackendKind::Dgram(c) => Rc::new(RefCell::new(
                DgramBackend::new(reg, c).map_err(|e| QmpError::generic(e.to_string()))?,
            )),
            BackendKind::Tap(c) => Rc::new(RefCell::new(
                TapBackend::new(reg, c).map_err(|e| QmpError::generic(e.to_string()))?,
            )),
            BackendKind::User(c) => Rc::new(RefCell::new(
                netdevd_backends::user::UserBackend::new(reg, *c)
                    .map_err(|e| QmpError::generic(e.to_string()))?,
            )),
        };
        let id = self
            .net
            .add(NewClient {
                name: name.to_string(),
                model,
                role: Role::Backend(Box::new(BackendEndpoint(backend.clone()))),
                is_netdev: true,
                peer: None,
            })
            .map_err(net_error)?;
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
        Ok(())
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
        let idx = ((token >> 40) & 0xffff) as usize;
        let gen = ((token >> 32) & 0xff) as u8;
        let sub = (token & 0xffff_ffff) as u32;
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

    /// Start an announce timer; its first round goes out now.
    pub fn announce(&mut self, p: AnnounceParameters, now: Instant) {
        let params = AnnounceParams {
            initial: p.initial,
            max: p.max,
            rounds: p.rounds,
            step: p.step,
            interfaces: p.interfaces,
            id: p.id.unwrap_or_default(),
        };
        let interfaces = params.interfaces.clone();
        if self.announcer.start(params, now) {
            self.net.announce_round(interfaces.as_deref());
        }
    }

    /// Run the announce rounds and backend timers that are due.
    pub fn run_timers(&mut self, now: Instant) {
        for interfaces in self.announcer.poll(now) {
            self.net.announce_round(interfaces.as_deref());
        }
        for slot in self.backends.iter().flatten() {
            let b = slot.backend.clone();
            let due = b.borrow().next_deadline().is_some_and(|t| t <= now);
            if due {
                b.borrow_mut().timers(now);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let backends = self
            .backends
            .iter()
            .flatten()
            .filter_map(|s| s.backend.borrow().next_deadline());
        self.announcer
            .next_deadline()
            .into_iter()
            .chain(backends)
            .min()
    }
}

fn rx_state(s: nic::RxState) -> &'static str {
    match s {
        nic::RxState::Normal => "normal",
        nic::RxState::None => "none",
        nic::RxState::All => "all",
    }
}

fn rx_filter_json(i: &nic::RxFilterInfo) -> Value {
    json!({
        "name": i.name,
        "promiscuous": i.promiscuous,
        "multicast": rx_state(i.multicast),
        "unicast": rx_state(i.unicast),
        "vlan": rx_state(i.vlan),
        "broadcast-allowed": i.broadcast_allowed,
        "multicast-overflow": i.multicast_overflow,
        "unicast-overflow": i.unicast_overflow,
        "main-mac": i.main_mac,
        "vlan-table": i.vlan_table,
        "unicast-table": i.unicast_table,
        "multicast-table": i.multicast_table,
    })
}

/// Parse one `--netdev` value (keyval or JSON) into a checked `Netdev`.
pub fn parse_netdev_option(s: &str) -> Result<Netdev, String> {
    let ty = Ty::Union(&NETDEV);
    let value = if s.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(s).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let tree = netdevd_qapi::keyval::parse(s, Some("type")).map_err(|e| e.to_string())?;
        netdevd_qapi::keyval::coerce(&tree, &ty).map_err(|e| e.to_string())?
    };
    parse_as(&value, &ty).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdevd_qapi::schema::command;

    fn state() -> State {
        State::new(Rc::new(Reactor::new().unwrap()))
    }

    fn run(
        state: &mut State,
        mon: &mut Monitor,
        name: &str,
        args: Value,
    ) -> Result<Value, QmpError> {
        let cmd = command(name).unwrap();
        let args = netdevd_qapi::visit::visit_args(
            Some(&args),
            netdevd_qapi::schema::command_args_ty(cmd),
        )
        .map_err(|e| QmpError::generic(e.to_string()))?;
        state.execute(cmd, args, mon, Instant::now())
    }

    #[test]
    fn netdev_lifecycle() {
        let mut st = state();
        let mut m = Monitor::default();
        run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "hubport", "id": "h0", "hubid": 0}),
        )
        .unwrap();
        let e = run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "hubport", "id": "h0", "hubid": 1}),
        )
        .unwrap_err();
        assert_eq!(e.desc, "Duplicate ID 'h0'");
        let e = run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "hubport", "id": "9h", "hubid": 1}),
        )
        .unwrap_err();
        assert_eq!(e.desc, "Parameter 'id' expects an identifier");
        let e = run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "none", "id": "n"}),
        )
        .unwrap_err();
        assert_eq!(
            e.desc,
            "network backend 'none' is not compiled into this binary"
        );
        let e = run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "socket", "id": "s"}),
        )
        .unwrap_err();
        assert_eq!(
            e.desc,
            "exactly one of listen=, connect=, mcast= or udp= is required"
        );
        let e = run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "tap", "id": "t", "vhost": true}),
        )
        .unwrap_err();
        assert_eq!(e.desc, "vhost-net requested but could not be initialized");
        let e = run(
            &mut st,
            &mut m,
            "netdev_add",
            json!({"type": "l2tpv3", "id": "l", "src": "127.0.0.1", "dst": "127.0.0.1", "txsession": 1}),
        )
        .unwrap_err();
        assert!(e.desc.contains("not available"), "{}", e.desc);
        run(
            &mut st,
            &mut m,
            "set_link",
            json!({"name": "h0", "up": false}),
        )
        .unwrap();
        assert_eq!(
            run(&mut st, &mut m, "query-rx-filter", json!({})).unwrap(),
            json!([])
        );
        run(&mut st, &mut m, "netdev_del", json!({"id": "h0"})).unwrap();
        let e = run(&mut st, &mut m, "netdev_del", json!({"id": "h0"})).unwrap_err();
        assert_eq!(e.class, netdevd_qmp::ErrorClass::DeviceNotFound);
    }

    #[test]
    fn getfd_and_fd_params() {
        let mut st = state();
        let mut m = Monitor::default();
        let e = run(&mut st, &mut m, "getfd", json!({"fdname": "x"})).unwrap_err();
        assert_eq!(e.desc, "No file descriptor supplied via SCM_RIGHTS");
        let (a, b) = rustix::pipe::pipe().unwrap();
        m.pending = vec![a, b];
        run(&mut st, &mut m, "getfd", json!({"fdname": "x"})).unwrap();
        assert!(m.pending.is_empty() && m.named.contains_key("x"));
        let mut src: Option<&mut Monitor> = Some(&mut m);
        assert!(src.check_fd("x").is_ok());
        assert_eq!(
            src.check_fd("y").unwrap_err().desc,
            "File descriptor named 'y' has not been found"
        );
        assert_eq!(
            src.check_fd("5x").unwrap_err().desc,
            "Invalid file descriptor number '5x'"
        );
        let fd = src.take_fd("x").unwrap();
        drop(fd);
        assert!(src.take_fd("x").is_err());
        let e = run(&mut st, &mut m, "closefd", json!({"fdname": "x"})).unwrap_err();
        assert_eq!(e.desc, "File descriptor named 'x' not found");
    }

    #[test]
    fn netdev_options_from_the_command_line() {
        let nd = parse_netdev_option("hubport,id=h0,hubid=0").unwrap();
        assert_eq!(nd.id, "h0");
        let nd2 = parse_netdev_option(r#"{"type":"hubport","id":"h0","hubid":0}"#).unwrap();
        assert_eq!(nd, nd2);
        assert!(parse_netdev_option("hubport,id=h0")
            .unwrap_err()
            .contains("hubid"));
        assert!(parse_netdev_option("{bad").unwrap_err().contains("JSON"));
    }
}
