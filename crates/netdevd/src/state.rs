//! The daemon's state: the registry of backends and the core ([`Registry`]), the announce
//! timers, what the greeting says, and what QMP sessions are to hear. Runs on the event
//! loop's thread; a command (`crate::commands`) sees a consistent registry and needs no
//! locks.

use std::rc::Rc;
use std::time::Instant;

use netdevd_backends::Reactor;
use netdevd_core::announce::{AnnounceParams, Announcer};
use netdevd_qapi::AnnounceParameters;
use netdevd_qmp::ServerInfo;
use serde_json::Value;

use crate::registry::Registry;

/// Everything the daemon serves.
pub struct State {
    pub reg: Registry,
    /// Where the user netdev finds its upstream resolvers (`--resolv-conf`).
    pub resolv_conf: std::path::PathBuf,
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
            reg: Registry::new(reactor),
            resolv_conf: std::path::PathBuf::from("/etc/resolv.conf"),
            announcer: Announcer::default(),
            info: ServerInfo {
                qemu: (7, 2, 0),
                package: format!("netdevd {}", env!("CARGO_PKG_VERSION")),
            },
            quit: false,
            events: Vec::new(),
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
            self.reg.net.announce_round(interfaces.as_deref());
        }
    }

    /// Run the announce rounds and backend timers that are due.
    pub fn run_timers(&mut self, now: Instant) {
        for interfaces in self.announcer.poll(now) {
            self.reg.net.announce_round(interfaces.as_deref());
        }
        self.reg.run_timers(now);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.announcer
            .next_deadline()
            .into_iter()
            .chain(self.reg.next_deadline())
            .min()
    }
}
