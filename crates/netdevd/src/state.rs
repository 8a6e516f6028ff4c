//! The daemon's state and what each QMP command does to it. Runs on the event loop's
//! thread; a command sees a consistent registry and needs no locks.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Instant;

use netdevd_core::announce::{AnnounceParams, Announcer};
use netdevd_core::net::Net;
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
    /// Take the fd (a named one leaves the monitor's table). The fd-taking drivers
    /// (socket, tap) are its callers; until they land only tests call it.
    #[cfg_attr(not(test), allow(dead_code))]
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

/// Everything the daemon serves.
pub struct State {
    pub net: Net,
    pub announcer: Announcer,
    pub info: ServerInfo,
    /// Set by `quit`: the loop answers, flushes and exits.
    pub quit: bool,
    /// Events to send to every negotiated session: (name, data).
    pub events: Vec<(String, Option<Value>)>,
}

impl State {
    pub fn new() -> Self {
        State {
            net: Net::new(),
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
                self.net.remove_netdev(&s(&args, "id")).map_err(net_error)?;
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

    /// Run the announce rounds that are due.
    pub fn run_timers(&mut self, now: Instant) {
        for interfaces in self.announcer.poll(now) {
            self.net.announce_round(interfaces.as_deref());
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.announcer.next_deadline()
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
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
        let mut st = State::new();
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
        let mut st = State::new();
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
