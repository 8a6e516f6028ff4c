//! The QMP command table: what each command does to the daemon's [`State`], its arguments
//! typed (the generated `*Args` structs; QMP's layer has checked them against the schema
//! before they get here).

use std::time::Instant;

use netdevd_core::nic;
use netdevd_qapi::schema::{CommandDef, Ty};
use netdevd_qapi::{
    parse_as, AnnounceParameters, ClosefdArgs, DeviceAddArgs, DeviceDelArgs, GetfdArgs, Netdev,
    NetdevDelArgs, QueryRxFilterArgs, SetLinkArgs, NETDEV,
};
use netdevd_qmp::QmpError;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::drivers::netdev_add;
use crate::fds::Monitor;
use crate::registry::net_error;
use crate::state::State;

/// The checked arguments as the command's generated type.
fn typed<T: DeserializeOwned>(args: Value) -> Result<T, QmpError> {
    // The QMP layer accepted exactly the schema's shape: a failure is a generator bug,
    // still answered as an error.
    serde_json::from_value(args).map_err(|e| QmpError::generic(e.to_string()))
}

impl State {
    /// Run a command whose arguments the QMP layer has checked.
    pub fn execute(
        &mut self,
        cmd: &'static CommandDef,
        args: Value,
        monitor: &mut Monitor,
        now: Instant,
    ) -> Result<Value, QmpError> {
        match cmd.name {
            "netdev_add" => {
                let nd: Netdev = parse_as(&args, &Ty::Union(&NETDEV))
                    .map_err(|e| QmpError::generic(e.to_string()))?;
                netdev_add(&mut self.reg, nd, &mut Some(monitor), &self.resolv_conf)?;
                Ok(json!({}))
            }
            "netdev_del" => {
                let a: NetdevDelArgs = typed(args)?;
                self.reg.netdev_del(&a.id)?;
                Ok(json!({}))
            }
            "device_add" => {
                let a: DeviceAddArgs = typed(args)?;
                let o = crate::drivers::nic::from_device_add(&a)?;
                let n = self.reg.net.nic_count();
                crate::drivers::nic::add(&mut self.reg, &o, n)?;
                Ok(json!({}))
            }
            "device_del" => {
                let a: DeviceDelArgs = typed(args)?;
                self.reg.device_del(&a.id)?;
                // QEMU emits the event once the device is gone; here that is now.
                self.events.push((
                    "DEVICE_DELETED".into(),
                    Some(json!({"device": a.id, "path": format!("/machine/peripheral/{}", a.id)})),
                ));
                Ok(json!({}))
            }
            "set_link" => {
                let a: SetLinkArgs = typed(args)?;
                self.reg.net.set_link(&a.name, a.up).map_err(net_error)?;
                Ok(json!({}))
            }
            "query-rx-filter" => {
                let a: QueryRxFilterArgs = typed(args)?;
                let infos = self.reg.net.rx_filters(a.name.as_deref()).map_err(net_error)?;
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
                self.reg
                    .net
                    .stats()
                    .into_iter()
                    .map(|(name, model, up, c)| {
                        let drops = self.reg.backend_drops(&name);
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
                let a: GetfdArgs = typed(args)?;
                if monitor.pending.is_empty() {
                    return Err(QmpError::generic(
                        "No file descriptor supplied via SCM_RIGHTS",
                    ));
                }
                let mut pending = std::mem::take(&mut monitor.pending).into_iter();
                let fd = pending.next();
                // The others of the batch are closed here, as QEMU does.
                drop(pending);
                if a.fdname.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(QmpError::generic(
                        "Parameter 'fdname' expects a name not starting with a digit",
                    ));
                }
                if let Some(fd) = fd {
                    monitor.named.insert(a.fdname, fd);
                }
                Ok(json!({}))
            }
            "closefd" => {
                let a: ClosefdArgs = typed(args)?;
                match monitor.named.remove(&a.fdname) {
                    Some(_) => Ok(json!({})),
                    None => Err(QmpError::generic(format!(
                        "File descriptor named '{}' not found",
                        a.fdname
                    ))),
                }
            }
            other => Err(QmpError::generic(format!(
                "The command {other} has not been found"
            ))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fds::FdSource;
    use netdevd_backends::Reactor;
    use netdevd_qapi::schema::command;
    use std::rc::Rc;

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
}
